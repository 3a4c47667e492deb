"""Fast DLM decoding: confidence-threshold parallel unmasking and block-wise approximate KV caches.

Both follow Fast-dLLM (Wu et al., 2025) and run block by block, left to right, each block until
it holds no mask:

- threshold > 0: a step commits every masked id of the block whose confidence (the probability of
  its predicted id) exceeds the threshold, and always at least the most confident one; the number
  of steps adapts to the model's certainty. threshold 0 keeps dlm.unmasking_schedule's fixed
  number of ids per step.
- cache "prefix": at a block's first step one full pass over the canvas gives that step's logits
  and every position's keys and values; the following steps run only the block and what follows
  it (a window of gen_length positions), attending the cached keys of everything before the block.
  "dual" also reuses the cached keys of what follows the block, so a step runs the block's
  block_length positions alone. The cache is approximate: it holds keys computed while the block
  was still masked. refresh_every k > 0 also refreshes it every k steps within a block (1: every
  step, which is exactly the uncached sampler).

Rows run in lockstep: a block ends when every row has filled it, rows done early sit idle.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from dlmscale.errors import ConfigError
from dlmscale.sampling.common import ban

CACHES = ("none", "prefix", "dual")


def check_fast_options(*, threshold: float, cache: str, refresh_every: int, steps: int,
                       remasking: str) -> None:
  """ConfigError naming the fix for a bad threshold / cache / refresh_every setting."""
  if cache not in CACHES:
    raise ConfigError(f"unknown cache {cache!r}: use one of {list(CACHES)}")
  if not threshold >= 0:
    raise ConfigError(f"threshold must be >= 0 (0: the fixed steps schedule), got {threshold}")
  if refresh_every < 0:
    raise ConfigError(f"refresh_every must be >= 0 (0: refresh the cache once per block), got "
                      f"{refresh_every}")
  if threshold > 0 and steps:
    raise ConfigError(f"threshold={threshold} picks the number of steps itself: leave steps=0 "
                      f"(got steps={steps}) or set threshold=0")
  if threshold > 0 and remasking != "low_confidence":
    raise ConfigError(f"threshold decoding commits by confidence: use remasking='low_confidence'"
                      f" (got {remasking!r}) or threshold=0")


@functools.partial(jax.jit, static_argnames=("static_model", "gen_length", "block_length",
                                             "commits", "use_threshold", "cache",
                                             "refresh_every", "remasking"))
def block_loop(static_model, params, canvas_BxT, first_B, key, temperature, threshold, mask_id,
               banned_V, *, gen_length, block_length, commits, use_threshold, cache,
               refresh_every, remasking):
  """(generated ids_BxG, commit step_BxG, forward passes) of the canvas whose answers start at
  first_B ([prompt, answer of masks, padding] rows, see dlm.dlm_generate). commits: ids per step
  of a block (the schedule, unused when use_threshold)."""
  model = static_model.model
  b, t = canvas_BxT.shape
  bl = block_length
  rows_Bx1 = jnp.arange(b)[:, None]
  slots_T = jnp.arange(t)
  visible_B = first_B + gen_length
  commits_S = jnp.asarray(commits or (1,), jnp.int32)
  width = gen_length if cache == "prefix" else bl  # queries of a cached pass

  def full_pass(canvas_BxT, kv):
    """Logits of every position and (when caching) every position's fresh keys and values."""
    if cache == "none":
      return model.apply(params, canvas_BxT, causal=False, lengths_B=visible_B)[0], kv
    allowed_BxTxT = jnp.broadcast_to(slots_T[None, None, :] < visible_B[:, None, None], (b, t, t))
    return model.attend(params, canvas_BxT, positions_BxT=jnp.broadcast_to(slots_T, (b, t)),
                        allowed_BxTxT=allowed_BxTxT)

  def cached_pass(canvas_BxT, kv, start_B):
    """Logits of the window [start, start + width) from its own tokens and the cached keys."""
    window_BxW = start_B[:, None] + jnp.arange(width)[None, :]
    valid_BxW = window_BxW < visible_B[:, None]
    tokens_BxW = jnp.take_along_axis(canvas_BxT, jnp.minimum(window_BxW, t - 1), axis=1)
    outside_BxS = slots_T[None, :] < start_B[:, None]  # the prefix
    if cache == "dual":  # and the suffix after the block
      outside_BxS |= ((slots_T[None, :] >= start_B[:, None] + bl)
                      & (slots_T[None, :] < visible_B[:, None]))
    logits_BxWxV, _ = model.attend(
        params, tokens_BxW, positions_BxT=window_BxW,
        allowed_BxTxT=jnp.broadcast_to(valid_BxW[:, None, :], (b, width, width)), kv=kv,
        cache_allowed_BxTxS=jnp.broadcast_to(outside_BxS[:, None, :], (b, width, t)))
    return logits_BxWxV

  def step(j, state):
    canvas_BxT, step_BxT, kv, passes, s = state
    start_B = first_B + j * bl
    block_BxL = start_B[:, None] + jnp.arange(bl)[None, :]
    if cache == "none":
      logits_BxTxV, _ = full_pass(canvas_BxT, kv)
      logits_BxLxV = jnp.take_along_axis(logits_BxTxV, block_BxL[..., None], axis=1)
    else:
      refresh = (s % refresh_every == 0) if refresh_every else (s == 0)

      def refreshed():
        logits_BxTxV, kv_new = full_pass(canvas_BxT, kv)
        return jnp.take_along_axis(logits_BxTxV, block_BxL[..., None], axis=1), kv_new

      def reused():
        return cached_pass(canvas_BxT, kv, start_B)[:, :bl], kv

      logits_BxLxV, kv = jax.lax.cond(refresh, refreshed, reused)
    logits_BxLxV = ban(logits_BxLxV, banned_V)
    k_noise, k_order = jax.random.split(jax.random.fold_in(key, passes))
    # argmax(logits + T * Gumbel) draws from softmax(logits / T); T = 0 is the plain argmax.
    predicted_BxL = jax.lax.cond(
        temperature > 0,
        lambda: jnp.argmax(logits_BxLxV + temperature
                           * jax.random.gumbel(k_noise, logits_BxLxV.shape), axis=-1),
        lambda: jnp.argmax(logits_BxLxV, axis=-1)).astype(jnp.int32)
    chosen_BxL = jnp.take_along_axis(logits_BxLxV, predicted_BxL[..., None], axis=-1)[..., 0]
    confidence_BxL = jnp.exp(chosen_BxL - jax.nn.logsumexp(logits_BxLxV, axis=-1))
    score_BxL = (confidence_BxL if remasking == "low_confidence"
                 else jax.random.uniform(k_order, (b, bl)))
    block_tokens_BxL = jnp.take_along_axis(canvas_BxT, block_BxL, axis=1)
    candidate_BxL = block_tokens_BxL == mask_id
    score_BxL = jnp.where(candidate_BxL, score_BxL, -jnp.inf)
    rank_BxL = jnp.argsort(jnp.argsort(-score_BxL, axis=-1, stable=True), axis=-1)
    if use_threshold:  # every confident id, and at least the most confident one
      commit_BxL = candidate_BxL & ((confidence_BxL > threshold) | (rank_BxL == 0))
    else:
      commit_BxL = candidate_BxL & (rank_BxL < commits_S[jnp.minimum(s, len(commits_S) - 1)])
    canvas_BxT = canvas_BxT.at[rows_Bx1, block_BxL].set(
        jnp.where(commit_BxL, predicted_BxL, block_tokens_BxL))
    step_BxT = step_BxT.at[rows_Bx1, block_BxL].set(
        jnp.where(commit_BxL, passes, jnp.take_along_axis(step_BxT, block_BxL, axis=1)))
    return canvas_BxT, step_BxT, kv, passes + 1, s + 1

  def block(j, state):
    block_BxL = first_B[:, None] + j * bl + jnp.arange(bl)[None, :]

    def unfinished(state):
      canvas_BxT, _, _, _, s = state
      masked = jnp.take_along_axis(canvas_BxT, block_BxL, axis=1) == mask_id
      return jnp.any(masked) & (s < bl)  # each step fills >= 1 id of every unfinished row

    state = jax.lax.while_loop(unfinished, functools.partial(step, j), (*state, jnp.int32(0)))
    return state[:4]

  kv = ()
  if cache != "none":
    c = model.cfg
    shape = (c.num_layers, b, c.num_kv_heads, t, c.head_dim)
    kv = (jnp.zeros(shape, c.dtype), jnp.zeros(shape, c.dtype))
  state = (canvas_BxT, jnp.full((b, t), -1, jnp.int32), kv, jnp.zeros((), jnp.int32))
  canvas_BxT, step_BxT, _, passes = jax.lax.fori_loop(0, gen_length // bl, block, state)
  answer_BxG = first_B[:, None] + jnp.arange(gen_length)[None, :]
  return (jnp.take_along_axis(canvas_BxT, answer_BxG, axis=1),
          jnp.take_along_axis(step_BxT, answer_BxG, axis=1), passes)
