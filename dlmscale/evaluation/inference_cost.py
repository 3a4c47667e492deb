"""Analytic forward FLOPs of generating text: AR with and without a KV cache vs DLM unmasking.

Counts are 2 x multiply-adds (Python ints, exact): per position the matmul parameters of
flops.matmul_params (the embedding lookup is free, the LM head counts, MoE layers count their
top-k and shared experts and the router), plus per (query, key) pair 4 x layers x heads x
head_dim for the attention scores and the attention-weighted values. Norms, RoPE, softmax and
the sampler itself are left out (a few percent at most for real widths).

Positions: generating N tokens after a P-token prompt runs P + N positions through the model,
as dlmscale.sampling does (AR: the prompt in one causal prefill, then N decode steps each
feeding one token; DLM: a canvas of the prompt and N answer slots).
- AR with a KV cache computes each position once; position t attends its t + 1 keys, so the
  prefill is one causal pass over P positions and decode step i (1-based) attends P + i keys.
  In all it is exactly one causal forward pass over P + N positions.
- AR without a cache re-runs, at step i, the causal pass over the first P + i positions.
- DLM runs `steps` bidirectional passes over all P + N positions (default steps = N: one token
  per step, the paper's comparison). Semi-autoregressive blocks change which slots a step may
  commit, not the pass, so they cost the same per step (no prefix cache is modelled).
With a cache, AR is one causal pass over P + N positions and the DLM `steps` full passes over
the same positions, so DLM / AR lies between steps and 2 x steps; the excess is the attention
term, which grows with P + N (the paper's 1B at P = 0: 16.0x for 16 tokens, 4708x for 4096).
The counts are of useful work: a kernel that computes masked keys too (a causal pass as a full
square, or a decode step over all max_len cache slots) does more.
"""
from __future__ import annotations

import operator
from typing import NamedTuple, Sequence

from dlmscale.errors import ConfigError
from dlmscale.flops import matmul_params
from dlmscale.models.transformer import ModelConfig

PAPER_GEN_LENS = tuple(2 ** k for k in range(4, 13))  # 16, 32, ..., 4096


class RatioRow(NamedTuple):
  """One generation length: AR-with-cache and DLM forward FLOPs and their ratio dlm / ar."""
  gen_len: int
  ar_flops: int
  dlm_flops: int
  ratio: float


def position_flops(cfg: ModelConfig) -> int:
  """Matmul FLOPs of one position through the network, attention scores and values excluded."""
  return 2 * matmul_params(cfg)


def attention_pair_flops(cfg: ModelConfig) -> int:
  """FLOPs of one (query, key) pair over all layers: q.k (2 H h) and p * v (2 H h) per layer."""
  return 4 * cfg.num_layers * cfg.num_heads * cfg.head_dim


def forward_flops(cfg: ModelConfig, positions: int, pairs: int) -> int:
  """FLOPs of running `positions` positions that attend `pairs` (query, key) pairs in all."""
  return positions * position_flops(cfg) + pairs * attention_pair_flops(cfg)


def causal_pairs(length: int) -> int:
  """(query, key) pairs of a causal pass over `length` positions: 1 + 2 + ... + length."""
  return length * (length + 1) // 2


def causal_pairs_up_to(length: int) -> int:
  """causal_pairs(1) + ... + causal_pairs(length), the tetrahedral number."""
  return length * (length + 1) * (length + 2) // 6


def ar_generation_flops(cfg: ModelConfig, prompt_len: int, gen_len: int,
                        kv_cache: bool = True) -> int:
  """Forward FLOPs of AR generation of gen_len tokens after prompt_len prompt tokens.

  With the cache: a causal prefill of the prompt, then gen_len decode steps, step i attending
  prompt_len + i keys. Without: step i re-runs the causal pass over prompt_len + i positions."""
  p, n = _lengths(prompt_len, gen_len)
  if kv_cache:
    return forward_flops(cfg, p + n, causal_pairs(p + n))
  # Passes over p + 1, ..., p + n positions.
  positions = n * p + n * (n + 1) // 2
  return forward_flops(cfg, positions, causal_pairs_up_to(p + n) - causal_pairs_up_to(p))


def dlm_generation_flops(cfg: ModelConfig, prompt_len: int, gen_len: int,
                         steps: int | None = None) -> int:
  """Forward FLOPs of DLM generation: `steps` (default gen_len) bidirectional passes over the
  prompt_len + gen_len canvas; the same with or without semi-autoregressive blocks."""
  p, n = _lengths(prompt_len, gen_len)
  steps = n if steps is None else _count("steps", steps, 1, "None: one per generated token")
  canvas = p + n
  return steps * forward_flops(cfg, canvas, canvas * canvas)


def flops_ratio_table(cfg: ModelConfig, gen_lens: Sequence[int] = PAPER_GEN_LENS,
                      prompt_len: int = 0, steps_per_token: float = 1.0) -> list[RatioRow]:
  """Per generation length, AR (KV cache) vs DLM FLOPs; the DLM takes
  round(steps_per_token * gen_len) steps (at least 1)."""
  if not steps_per_token > 0:
    raise ConfigError(f"steps_per_token must be > 0 (1: one token per step), got "
                      f"{steps_per_token}")
  rows = []
  for n in gen_lens:
    ar = ar_generation_flops(cfg, prompt_len, n)
    dlm = dlm_generation_flops(cfg, prompt_len, n, max(1, round(steps_per_token * n)))
    rows.append(RatioRow(n, ar, dlm, dlm / ar))
  return rows


def _lengths(prompt_len, gen_len) -> tuple[int, int]:
  return (_count("prompt_len", prompt_len, 0, "prompt tokens"),
          _count("gen_len", gen_len, 1, "tokens to generate"))


def _count(name: str, value, low: int, meaning: str) -> int:
  """value as an int, checked to be an integer >= low."""
  try:
    number = operator.index(value)
  except TypeError:
    number = None
  if number is None or isinstance(value, bool) or number < low:
    raise ConfigError(f"{name} must be an integer >= {low} ({meaning}), got {value!r}")
  return number
