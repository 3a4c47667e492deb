"""Text in, text out: generate_text for a LoadedModel of either kind.

Every prompt is encoded after an eod id: training rows are documents that each follow an eod, so
the model sees the prompt as the start of a document (an AR model also needs a first token).
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np

from dlmscale import parallel
from dlmscale.errors import ConfigError
from dlmscale.progress import Progress
from dlmscale.sampling.ar import ar_generate, check_sampling
from dlmscale.sampling.common import left_pad
from dlmscale.sampling.dlm import REMASKING, dlm_generate, unmasking_schedule
from dlmscale.sampling.dlm_cache import check_fast_options

PROMPT_WIDTH_MULTIPLE = 16  # prompt widths are rounded up so similar prompts share a compile


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
  """text up to the earliest occurrence of any stop string."""
  ends = [i for i in (text.find(s) for s in stop) if i >= 0]
  return text[:min(ends)] if ends else text


def encode_prompts(lm, prompts: Sequence[str], max_new_tokens: int) -> list[np.ndarray]:
  """eod + the prompt's ids; ConfigError when a prompt and its answer exceed lm.seq_len."""
  tok = lm.tokenizer
  out = []
  for i, prompt in enumerate(prompts):
    ids = np.concatenate([[tok.eod_id], tok.encode(prompt)]).astype(np.int32)
    if len(ids) + max_new_tokens > lm.seq_len:
      raise ConfigError(
          f"prompt {i} is {len(ids)} tokens (with the leading eod); with max_new_tokens="
          f"{max_new_tokens} it needs {len(ids) + max_new_tokens} > seq_len={lm.seq_len}, the "
          "window the model was trained on: shorten the prompt or lower max_new_tokens")
    out.append(ids)
  return out


def generate_text(lm, prompts: Sequence[str], *, max_new_tokens: int, num_samples: int = 1,
                  temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                  stop: Sequence[str] = (), steps: int = 0, block_length: int = 0,
                  remasking: str = "low_confidence", seed: int = 0, batch_size: int = 0,
                  threshold: float = 0.0, cache: str = "none",
                  refresh_every: int = 0) -> list[list[str]]:
  """For each prompt, its num_samples completions (text after the prompt, cut at eod and at the
  first stop string). lm.kind 'ar' samples with a KV cache (temperature, top_k, top_p); 'dlm'
  unmasks max_new_tokens ids in `steps` passes, `block_length` at a time, with `remasking` and
  Gumbel `temperature`, or by confidence `threshold`, optionally through a block `cache` (see
  dlm_generate). Rows run batch_size at a time (0: all at once)."""
  if isinstance(prompts, str):
    raise ConfigError("prompts must be a list of strings, not one string: wrap it in a list")
  if num_samples < 1 or batch_size < 0:
    raise ConfigError(f"num_samples must be >= 1 and batch_size >= 0 (0: one batch), got "
                      f"{num_samples} and {batch_size}")
  if any(not s for s in stop):
    raise ConfigError(f"stop strings must be non-empty, got {list(stop)}: remove the empty one")
  if lm.kind == "ar":
    check_sampling(temperature, top_k, top_p)
  elif remasking not in REMASKING:
    raise ConfigError(f"unknown remasking {remasking!r}: use one of {list(REMASKING)}")
  else:  # bad settings fail before any work
    check_fast_options(threshold=threshold, cache=cache, refresh_every=refresh_every, steps=steps,
                       remasking=remasking)
    unmasking_schedule(max_new_tokens, steps, block_length)
  rows = [ids for ids in encode_prompts(lm, prompts, max_new_tokens) for _ in range(num_samples)]
  if not rows:
    return []
  width = math.ceil(max(map(len, rows)) / PROMPT_WIDTH_MULTIPLE) * PROMPT_WIDTH_MULTIPLE
  per_batch = _rounded_batch(batch_size or len(rows), lm.data_parallel_size)
  key = jax.random.key(seed)
  texts = []
  bar = Progress(f"generate {lm.kind}", len(rows), "row")
  for i, start in enumerate(range(0, len(rows), per_batch)):
    chunk = rows[start:start + per_batch]
    # Repeat the last row so every batch has one shape (one compile); the copies are dropped.
    tokens_BxP, lengths_B = left_pad(chunk + chunk[-1:] * (per_batch - len(chunk)),
                                     lm.tokenizer.eod_id, width)
    ids_BxN, n_B = _generate(lm, tokens_BxP, lengths_B, jax.random.fold_in(key, i),
                             max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k,
                             top_p=top_p, steps=steps, block_length=block_length,
                             remasking=remasking, threshold=threshold, cache=cache,
                             refresh_every=refresh_every)
    texts += [cut_at_stop(lm.tokenizer.decode(ids[:n]), stop)
              for ids, n in zip(ids_BxN[:len(chunk)], n_B)]
    bar.update(len(chunk))
  bar.close()
  return [texts[i:i + num_samples] for i in range(0, len(texts), num_samples)]


def _rounded_batch(rows: int, data_parallel: int) -> int:
  return math.ceil(rows / data_parallel) * data_parallel


def banned_ids(lm) -> tuple[int, ...]:
  """Ids never to sample: the mask id and the model's padding ids past the tokenizer's."""
  tok = lm.tokenizer
  return (tok.mask_id, *range(tok.vocab_size, lm.model.cfg.vocab_size))


def _generate(lm, tokens_BxP, lengths_B, key, *, max_new_tokens, temperature, top_k, top_p, steps,
              block_length, remasking, threshold, cache, refresh_every):
  """(ids_BxN, lengths_B) as numpy: the generated ids and how many precede the eod/stop.

  Traced under the mesh's activation sharding, so activations and the KV cache are split over
  the batch axes like in training (when the batch divides them)."""
  tok = lm.tokenizer
  with parallel.activation_sharding(lm.mesh, lm.rules):
    if lm.kind == "ar":
      out = ar_generate(lm.model, lm.params, tokens_BxP, lengths_B,
                        max_new_tokens=max_new_tokens, key=key, eod_id=tok.eod_id,
                        temperature=temperature, top_k=top_k, top_p=top_p,
                        banned_ids=banned_ids(lm))
    else:
      out = dlm_generate(lm.model, lm.params, tokens_BxP, lengths_B, gen_length=max_new_tokens,
                         key=key, mask_id=tok.mask_id, eod_id=tok.eod_id, steps=steps,
                         block_length=block_length, remasking=remasking,
                         temperature=temperature, banned_ids=banned_ids(lm), threshold=threshold,
                         cache=cache, refresh_every=refresh_every)
    return np.asarray(out.tokens), np.asarray(out.lengths)
