"""String-level log-likelihoods of a loaded checkpoint, compatible with lm-evaluation-harness.

`Scorer(lm).loglikelihood([(context, continuation), ...])` scores each continuation: exactly for
AR models, by a Monte Carlo lower bound (likelihood.py) for DLMs. Tokenisation follows lm-eval:
trailing whitespace of the context moves to the continuation, the pair is encoded whole and split
after the context's own encoding, and an empty context becomes the eod token. A context longer
than the window is cut on the left; the model sees at most `seq_len` tokens: AR reads
context + continuation[:-1], a DLM reads context + continuation, and both keep at least one
context token, so a continuation may have up to seq_len (AR) or seq_len - 1 (DLM) tokens.

For a DLM, `greedy` means: with the whole continuation masked, the one-pass argmax at every
continuation position equals the target. The rolling NLL of a DLM is the configured bound over
each window with the window's prefix as context (num_samples passes per window; 'chain' costs one
pass per token). Estimates are seeded by the request's tokens, so a request scores the same in
any batch, order or position.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import jax
import numpy as np
from jax.sharding import NamedSharding

from dlmscale import parallel
from dlmscale.errors import ConfigError
from dlmscale.evaluation import likelihood

_MIN_BUCKET = 8
# Padded lengths per octave: 4 wastes at most 25% of a batch's FLOPs on padding (powers of two
# up to 50%) for at most twice the compilations.
LENGTH_STEPS = 4


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
  """log p(continuation | context) in nats (a lower bound for a DLM) and its Monte Carlo stderr
  (0 when exact); greedy: the continuation is the model's argmax; num_tokens: its length."""
  logprob: float
  stderr: float
  greedy: bool
  num_tokens: int


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
  """lm-eval's split: trailing whitespace joins the continuation; the whole string is encoded."""
  if not context:
    return [int(tokenizer.eod_id)], [int(t) for t in tokenizer.encode(continuation)]
  n_spaces = len(context) - len(context.rstrip())
  if n_spaces:
    context, continuation = context[:-n_spaces], context[-n_spaces:] + continuation
  whole = [int(t) for t in tokenizer.encode(context + continuation)]
  context_ids = [int(t) for t in tokenizer.encode(context)]
  return context_ids, whole[len(context_ids):]


def rolling_windows(tokens: Sequence[int], prefix_token: int, max_targets: int):
  """lm-eval's disjoint rolling windows: (context, targets) pairs covering every token once, each
  target chunk of up to `max_targets` tokens with context + targets = max_targets + 1 tokens (the
  first window's context is `prefix_token` alone)."""
  tokens = list(tokens)
  windows = []
  for start in range(0, len(tokens), max_targets):
    targets = tokens[start:start + max_targets]
    if start == 0:
      context = [prefix_token]
    else:
      context = tokens[max(start + len(targets) - max_targets - 1, 0):start]
    windows.append((context, targets))
  return windows


def _request_id(context: Sequence[int], continuation: Sequence[int]) -> int:
  data = np.asarray(list(context) + [-1] + list(continuation), np.int64).tobytes()
  return zlib.crc32(data)


def padded_length(n: int, cap: int, steps: int = 1) -> int:
  """Padded length: the next multiple of 2^k / steps above n (2^k <= n - 1 < 2^(k+1)) and of
  _MIN_BUCKET, at least _MIN_BUCKET, at most `cap` (steps=1: the next power of two)."""
  below = 1 << max(n - 1, 1).bit_length() - 1
  step = max(_MIN_BUCKET, below // steps)
  return min(max(_MIN_BUCKET, -(-n // step) * step), max(cap, n))


def dlm_batching(batch_size: int, dp: int, num_samples: int, estimator: str) -> tuple[int, int]:
  """(requests per batch, samples per pass) of a DLM: the most rows r * g <= batch_size, r a
  multiple of dp, g dividing num_samples (any g for 'chain'); ties go to the fewest requests
  (one batch pads every request to its longest)."""
  best = (dp, 1)
  for r in range(dp, max(batch_size, dp) + 1, dp):
    g = max((g for g in range(1, batch_size // r + 1)
             if estimator == "chain" or num_samples % g == 0), default=0)
    if r * g > best[0] * best[1]:
      best = (r, g)
  return best


class Scorer:
  """Scores (context, continuation) requests with a LoadedModel; see the module docstring.

  batch_size is the number of sequences per forward pass: AR scores that many requests at once; a
  DLM scores data_parallel_size (or more) requests with several mask samples each per pass (twice
  the rows with guidance), as many rows as fit (dlm_batching). estimator, num_samples and
  cfg_scale apply to DLMs; AR is exact.

  forward_passes records the work done, one (rows, padded_length, head_positions, count) per
  batch and kind of pass (head_positions: per row, where logits are computed), for cost
  accounting (benchmarks/scoring_throughput.py)."""

  def __init__(self, lm, *, estimator: str = "fixed_count", num_samples: int = 128,
               cfg_scale: float = 0.0, batch_size: int = 32, seed: int = 0,
               length_steps: int = LENGTH_STEPS, batching: tuple[int, int] | None = None):
    """length_steps: padded lengths per octave (1: powers of two). batching: a DLM's (requests
    per batch, samples per pass) instead of dlm_batching's choice (for comparisons)."""
    likelihood.check_estimator(estimator)
    if num_samples < 1 or batch_size < 1:
      raise ConfigError(f"num_samples={num_samples} and batch_size={batch_size} must be >= 1")
    if cfg_scale < 0:
      raise ConfigError(f"cfg_scale={cfg_scale} is negative: use 0 (no guidance) or a weight > 0")
    if lm.kind not in ("ar", "dlm"):
      raise ConfigError(f"model kind {lm.kind!r} is neither 'ar' nor 'dlm'")
    self.lm = lm
    self.estimator, self.num_samples, self.cfg_scale = estimator, num_samples, cfg_scale
    self.seed = seed
    dp = lm.data_parallel_size
    if length_steps < 1:
      raise ConfigError(f"length_steps={length_steps} must be >= 1 (1: powers of two)")
    if lm.kind == "ar":
      self.requests_per_batch, self.samples_per_pass = -(-batch_size // dp) * dp, 1
    elif batching is None:
      self.requests_per_batch, self.samples_per_pass = dlm_batching(batch_size, dp, num_samples,
                                                                    estimator)
    else:
      requests, per_pass = batching
      if requests < 1 or requests % dp or per_pass < 1 or (
          estimator != "chain" and num_samples % per_pass):
        raise ConfigError(f"batching={batching}: requests must be a positive multiple of {dp} "
                          f"and samples per pass must divide num_samples={num_samples}")
      self.requests_per_batch, self.samples_per_pass = requests, per_pass
    self.length_steps = length_steps
    self._compiled: dict = {}
    self.forward_passes: list[tuple[int, int, int, int]] = []

  # --- public API -------------------------------------------------------------------------------

  def loglikelihood(self, requests: Sequence[tuple[str, str]], progress=None
                    ) -> list[LogLikelihood]:
    tok = self.lm.tokenizer
    return self.loglikelihood_tokens([encode_pair(tok, c, x) for c, x in requests], progress)

  def loglikelihood_tokens(self, requests: Sequence[tuple[Sequence[int], Sequence[int]]],
                           progress=None) -> list[LogLikelihood]:
    """Token-level requests; a context must hold at least one token (use the eod id).
    progress: a dlmscale.progress.Progress (or anything with update(n)) told of each batch."""
    prepared = [self._fit(i, list(c), list(x)) for i, (c, x) in enumerate(requests)]
    results: list[LogLikelihood | None] = [None] * len(prepared)
    order = sorted(range(len(prepared)), key=lambda i: -sum(map(len, prepared[i])))
    per_batch = self.requests_per_batch
    for start in range(0, len(order), per_batch):
      chunk = order[start:start + per_batch]
      for i, result in zip(chunk, self._score_batch([prepared[i] for i in chunk])):
        results[i] = result
      if progress is not None:
        progress.update(len(chunk))
    return results

  def loglikelihood_rolling(self, texts: Sequence[str]) -> list[LogLikelihood]:
    """Log-likelihood of each whole text over lm-eval's disjoint rolling windows (the first token
    predicted from the eod token); window stderrs add in quadrature."""
    max_targets = self.lm.seq_len - (self.lm.kind == "dlm")
    eod = int(self.lm.tokenizer.eod_id)
    windows = [rolling_windows(self.lm.tokenizer.encode(t), eod, max_targets) for t in texts]
    flat = self.loglikelihood_tokens([w for ws in windows for w in ws])
    out, pos = [], 0
    for ws in windows:
      parts, pos = flat[pos:pos + len(ws)], pos + len(ws)
      out.append(LogLikelihood(logprob=float(sum(p.logprob for p in parts)),
                               stderr=float(np.sqrt(sum(p.stderr ** 2 for p in parts))),
                               greedy=all(p.greedy for p in parts),
                               num_tokens=sum(p.num_tokens for p in parts)))
    return out

  # --- internals --------------------------------------------------------------------------------

  def _fit(self, index: int, context: list[int], continuation: list[int]):
    """Left-truncates the context to the window; a continuation that cannot fit is an error."""
    if not context:
      raise ConfigError(f"request {index}: empty context tokens: pass [eod_id] as the context")
    window = self.lm.seq_len + (self.lm.kind == "ar")  # AR never reads the last token
    if len(continuation) > window - 1:
      raise ConfigError(
          f"request {index}: continuation of {len(continuation)} tokens does not fit the "
          f"{self.lm.seq_len}-token window with a context token ({self.lm.kind} models take at "
          f"most {window - 1}): shorten the continuation or score with a longer window "
          "(eval.max_length; RoPE beyond the trained length)")
    return context[-(window - len(continuation)):], continuation

  def _score_batch(self, batch):
    lm = self.lm
    rows = self.requests_per_batch
    longest = max(len(c) + len(x) for c, x in batch)
    # An AR row may hold seq_len + 1 tokens: causal attention never lets the last one matter.
    length = padded_length(longest, lm.seq_len + (lm.kind == "ar"), self.length_steps)
    tokens = np.zeros((rows, length), np.int32)
    cont_start, lengths = np.ones(rows, np.int32), np.full(rows, 2, np.int32)
    ids = np.zeros(rows, np.uint32)
    for r, (c, x) in enumerate(batch):
      tokens[r, :len(c) + len(x)] = c + x
      cont_start[r], lengths[r], ids[r] = len(c), len(c) + len(x), _request_id(c, x)
    args = self._place(tokens, cont_start, lengths)
    if lm.kind == "ar":
      logprob, greedy = self._function()(lm.params, *args)
      stderr = np.zeros(rows)
      self.forward_passes.append((rows, length, length, 1))
    else:
      # Logits are computed on this window after each context (and the chain makes one pass per
      # window position); a power of two keeps the compilations few.
      window = padded_length(max(len(x) for _, x in batch), length)
      out = self._function(window)(lm.params, *args, *self._place_1d(ids))
      g, guided = self.samples_per_pass, 1 + (self.cfg_scale > 0)
      passes = -(-window // g) if self.estimator == "chain" else self.num_samples // g
      self.forward_passes += [(rows * guided, length, window, 1),
                              (rows * g * guided, length, window, passes)]
      logprob, stderr, greedy = out["mean_B"], out["stderr_B"], out["greedy_B"]
    logprob, stderr, greedy = (np.asarray(jax.device_get(a)) for a in (logprob, stderr, greedy))
    return [LogLikelihood(logprob=float(logprob[r]) if x else 0.0,
                          stderr=float(stderr[r]) if x else 0.0,
                          greedy=bool(greedy[r]) or not x, num_tokens=len(x))
            for r, (_, x) in enumerate(batch)]

  def _place(self, tokens_BxL, cont_start_B, lengths_B):
    sharding = self.lm.batch_sharding
    return (jax.device_put(tokens_BxL, sharding), *self._place_1d(cont_start_B, lengths_B))

  def _place_1d(self, *arrays_B):
    sharding = self.lm.batch_sharding
    row_sharding = NamedSharding(sharding.mesh, jax.sharding.PartitionSpec(sharding.spec[0]))
    return tuple(jax.device_put(a, row_sharding) for a in arrays_B)

  def _function(self, max_cont: int = 0):
    """The jitted scoring function (jit keeps one executable per padded batch shape)."""
    if max_cont not in self._compiled:
      self._compiled[max_cont] = self._build(max_cont)
    return self._compiled[max_cont]

  def _build(self, max_cont: int):
    lm = self.lm
    out = parallel.replicated(lm.mesh)  # every process reads every row
    if lm.kind == "ar":
      return jax.jit(lambda params, *batch: likelihood.ar_loglikelihood(lm.model, params, *batch),
                     out_shardings=out)
    rng = jax.random.key(self.seed)

    def dlm_fn(params, tokens_BxL, cont_start_B, lengths_B, ids_B):
      return likelihood.dlm_loglikelihood(
          lm.model, params, tokens_BxL, cont_start_B, lengths_B, ids_B, rng,
          estimator=self.estimator, num_samples=self.num_samples,
          samples_per_pass=self.samples_per_pass, max_cont_len=max_cont,
          mask_id=int(lm.tokenizer.mask_id), cfg_scale=self.cfg_scale)
    return jax.jit(dlm_fn, out_shardings=out)

