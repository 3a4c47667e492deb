"""Autoregressive sampling with a KV cache: one jitted prefill, then a while-loop of decode steps.

Prompts of different lengths share a batch left-padded (common.left_pad): the cache keeps each
row's first real slot, so every row sees exactly its own tokens at positions 0, 1, ...
"""
from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dlmscale.errors import ConfigError
from dlmscale.sampling.common import (StaticModel, ban, banned_mask, check_temperature,
                                      prompt_lengths)


class ArOutput(NamedTuple):
  """tokens_BxN: generated ids; a row that stopped holds its stop token at index lengths_B[b]
  and pad ids after it. lengths_B: tokens before the stop (all N when none came)."""
  tokens: jax.Array
  lengths: jax.Array


def sample_tokens(logits_BxV, key, *, temperature, top_k: int = 0, top_p: float = 1.0):
  """Next ids [B]: argmax at temperature 0; else a draw from softmax(logits / temperature) over
  the top_k most likely ids (0: all) that also form the smallest set with probability >= top_p.
  temperature may be traced (one compiled sampler for every temperature)."""
  greedy_B = jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
  if isinstance(temperature, (int, float)) and temperature == 0:
    return greedy_B
  logits_BxV = logits_BxV.astype(jnp.float32) / jnp.maximum(temperature, 1e-6)
  if 0 < top_k < logits_BxV.shape[-1]:
    kth_Bx1 = jax.lax.top_k(logits_BxV, top_k)[0][:, -1:]
    logits_BxV = jnp.where(logits_BxV < kth_Bx1, -jnp.inf, logits_BxV)
  if top_p < 1.0:
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    # An id is kept while the mass of the more likely ids is below top_p (the first always is).
    kept_B = jnp.sum(jnp.cumsum(probs_BxV, axis=-1) - probs_BxV < top_p, axis=-1)
    floor_Bx1 = jnp.take_along_axis(sorted_BxV, kept_B[:, None] - 1, axis=-1)
    logits_BxV = jnp.where(logits_BxV < floor_Bx1, -jnp.inf, logits_BxV)
  sampled_B = jax.random.categorical(key, logits_BxV, axis=-1).astype(jnp.int32)
  return jnp.where(temperature > 0, sampled_B, greedy_B)


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
  check_temperature(temperature)
  if top_k < 0:
    raise ConfigError(f"top_k must be >= 0 (0: no top-k filter), got {top_k}")
  if not 0.0 < top_p <= 1.0:
    raise ConfigError(f"top_p must be in (0, 1] (1: no nucleus filter), got {top_p}")


def ar_generate(model, params, prompt_BxP, prompt_lengths_B=None, *, max_new_tokens: int, key,
                eod_id: int, temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0,
                stop_ids: Sequence[int] = (), pad_id: int | None = None,
                banned_ids: Sequence[int] = ()) -> ArOutput:
  """Samples up to max_new_tokens ids after each left-padded prompt (lengths_B real tokens each,
  default all P; at least one). eod_id and stop_ids end a row; later steps emit pad_id (default
  eod_id). banned_ids are never sampled. The loop stops early once every row has stopped."""
  check_sampling(temperature, top_k, top_p)
  if max_new_tokens < 1:
    raise ConfigError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
  p = np.shape(prompt_BxP)[1]
  lengths_B = prompt_lengths(prompt_BxP, prompt_lengths_B, minimum=1,
                             hint="an AR model needs a token to condition on (start with eod)")
  stops = tuple(sorted({int(eod_id), *map(int, stop_ids)}))
  return _ar_loop(StaticModel(model), params, jnp.asarray(prompt_BxP, jnp.int32),
                  jnp.asarray(p - lengths_B, jnp.int32), key, jnp.float32(temperature),
                  banned_mask(model.cfg.vocab_size, banned_ids), max_new_tokens=max_new_tokens,
                  top_k=int(top_k), top_p=float(top_p), stop_ids=stops,
                  pad_id=int(eod_id if pad_id is None else pad_id))


@functools.partial(jax.jit, static_argnames=("static_model", "max_new_tokens", "top_k", "top_p",
                                             "stop_ids", "pad_id"))
def _ar_loop(static_model, params, prompt_BxP, start_B, key, temperature, banned_V, *,
             max_new_tokens, top_k, top_p, stop_ids, pad_id) -> ArOutput:
  model, n = static_model.model, max_new_tokens
  b, p = prompt_BxP.shape
  logits_BxPxV, cache = model.prefill(params, prompt_BxP, max_len=p + n, start_B=start_B)
  stops = jnp.asarray(stop_ids, jnp.int32)

  def running(state):
    step, _, _, _, done_B = state
    return (step < n) & ~jnp.all(done_B)

  def decode(state):
    step, cache, logits_BxV, out_BxN, done_B = state
    token_B = sample_tokens(ban(logits_BxV, banned_V), jax.random.fold_in(key, step),
                            temperature=temperature, top_k=top_k, top_p=top_p)
    token_B = jnp.where(done_B, pad_id, token_B)
    out_BxN = jax.lax.dynamic_update_slice(out_BxN, token_B[:, None], (0, step))
    done_B = done_B | jnp.isin(token_B, stops)
    logits_BxV, cache = model.decode_step(params, cache, token_B)
    return step + 1, cache, logits_BxV, out_BxN, done_B

  state = (jnp.zeros((), jnp.int32), cache, logits_BxPxV[:, -1],
           jnp.full((b, n), pad_id, jnp.int32), jnp.zeros((b,), bool))
  out_BxN = jax.lax.while_loop(running, decode, state)[3]
  # Pad ids come only after a row's stop, so the first stop id in a row is where it stopped.
  stopped_BxN = jnp.isin(out_BxN, stops)
  lengths_B = jnp.where(stopped_BxN.any(-1), jnp.argmax(stopped_BxN, axis=-1), n)
  return ArOutput(out_BxN, lengths_B.astype(jnp.int32))
