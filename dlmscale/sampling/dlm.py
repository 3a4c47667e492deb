"""Masked-diffusion sampling by iterative unmasking (LLaDA-style), batched and jitted.

The answer starts as gen_length mask tokens after the prompt. Each step runs the bidirectional
model on the whole canvas, predicts every position, and commits a scheduled number of the still
masked positions of the current block: the most confident predictions ("low_confidence"
remasking: the rest stay masked) or random ones ("random"). Blocks of block_length tokens are
decoded left to right (semi-autoregressive); the steps are split evenly over the blocks and each
block's tokens as evenly as possible over its steps. Prompt tokens are never changed.

Rows of different prompt lengths are laid out as [prompt, answer, padding] and the padding is
hidden from attention (the model's lengths_B), so each row sees exactly its own positions 0, 1, ...

Faster options (dlm_cache): confidence-threshold parallel unmasking (`threshold`) and a block-wise
approximate KV cache (`cache` "prefix" or "dual", refreshed once per block or every
`refresh_every` steps).
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
from dlmscale.sampling.dlm_cache import block_loop, check_fast_options

REMASKING = ("low_confidence", "random")


class DlmOutput(NamedTuple):
  """sequences_Bx(P+G): the prompt as given (left-padded) then the G generated ids.
  tokens_BxG: the generated ids cut at the first eod (eod ids from there on); lengths_B: ids
  before that eod. commit_step_BxG: the step at which each generated id was unmasked.
  passes: model forward passes run (int32 scalar; rows of a batch run in lockstep)."""
  sequences: jax.Array
  tokens: jax.Array
  lengths: jax.Array
  commit_step: jax.Array
  passes: jax.Array


def unmasking_schedule(gen_length: int, steps: int = 0, block_length: int = 0):
  """(commits_S, blocks_S): ids unmasked at each step and the block each step works on.

  steps 0: one id per step; block_length 0: the whole answer is one block."""
  if gen_length < 1:
    raise ConfigError(f"gen_length (max_new_tokens) must be >= 1, got {gen_length}")
  block_length = block_length or gen_length
  if block_length < 0 or gen_length % block_length:
    raise ConfigError(f"gen_length {gen_length} is not a multiple of block_length "
                      f"{block_length}: pick a block length that divides it (0: one block)")
  num_blocks = gen_length // block_length
  steps = steps or gen_length
  if steps < 0 or steps % num_blocks or steps > gen_length:
    raise ConfigError(f"steps={steps} must be a multiple of the {num_blocks} blocks "
                      f"(gen_length {gen_length} / block_length {block_length}) and at most "
                      f"gen_length (one id per step): use e.g. steps={gen_length}")
  per_block = steps // num_blocks
  base, extra = divmod(block_length, per_block)
  commits = [base + (i < extra) for i in range(per_block)] * num_blocks
  blocks = [j for j in range(num_blocks) for _ in range(per_block)]
  return np.array(commits, np.int32), np.array(blocks, np.int32)


def dlm_generate(model, params, prompt_BxP, prompt_lengths_B=None, *, gen_length: int, key,
                 mask_id: int, eod_id: int, steps: int = 0, block_length: int = 0,
                 remasking: str = "low_confidence", temperature: float = 0.0,
                 allow_eod: bool = True, banned_ids: Sequence[int] = (), threshold: float = 0.0,
                 cache: str = "none", refresh_every: int = 0) -> DlmOutput:
  """Generates gen_length ids after each left-padded prompt (lengths_B real tokens each, default
  all P) in `steps` denoising passes (see unmasking_schedule). temperature > 0 adds Gumbel noise
  of that scale to the logits (a draw from softmax(logits / temperature)); 0 is greedy. The mask
  id and banned_ids are never produced, nor eod when allow_eod is False.

  threshold > 0 (with steps=0): each step commits every masked id of the block more confident
  than the threshold, at least one (threshold >= 1: one per step, the default sampler's answer).
  cache "prefix" / "dual": block-wise approximate KV cache, refreshed at each block's first step
  and every refresh_every steps (0: once per block). See dlm_cache."""
  check_temperature(temperature)
  if remasking not in REMASKING:
    raise ConfigError(f"unknown remasking {remasking!r}: use one of {list(REMASKING)}")
  check_fast_options(threshold=threshold, cache=cache, refresh_every=refresh_every, steps=steps,
                     remasking=remasking)
  commits_S, blocks_S = unmasking_schedule(gen_length, steps, block_length)
  prompt_BxP = np.asarray(prompt_BxP, np.int32)
  b, p = prompt_BxP.shape
  lengths_B = prompt_lengths(prompt_BxP, prompt_lengths_B, minimum=0,
                             hint="give each row's number of real (right-aligned) tokens")
  # [prompt, answer of masks, padding]: every row's positions start at 0.
  canvas_BxT = np.full((b, p + gen_length), eod_id, np.int32)
  for row, prompt, n in zip(canvas_BxT, prompt_BxP, lengths_B):
    row[:n] = prompt[p - n:]
    row[n:n + gen_length] = mask_id
  banned = [mask_id, *banned_ids] + ([] if allow_eod else [eod_id])
  args = (StaticModel(model), params, jnp.asarray(canvas_BxT), jnp.asarray(lengths_B, jnp.int32),
          key, jnp.float32(temperature))
  banned_V = banned_mask(model.cfg.vocab_size, banned)
  if threshold == 0 and cache == "none":
    gen_BxG, commit_BxG = _dlm_loop(
        *args, jnp.int32(mask_id), banned_V, gen_length=gen_length,
        commits=tuple(commits_S.tolist()), blocks=tuple(blocks_S.tolist()), remasking=remasking)
    passes = jnp.int32(len(commits_S))
  else:
    per_block = len(commits_S) // (max(blocks_S) + 1)
    gen_BxG, commit_BxG, passes = block_loop(
        *args, jnp.float32(threshold), jnp.int32(mask_id), banned_V, gen_length=gen_length,
        block_length=gen_length // (max(blocks_S) + 1),
        commits=tuple(commits_S[:per_block].tolist()), use_threshold=threshold > 0, cache=cache,
        refresh_every=int(refresh_every), remasking=remasking)
  is_eod_BxG = gen_BxG == eod_id
  cut_B = jnp.where(is_eod_BxG.any(-1), jnp.argmax(is_eod_BxG, axis=-1), gen_length)
  tokens_BxG = jnp.where(jnp.arange(gen_length)[None] < cut_B[:, None], gen_BxG, eod_id)
  return DlmOutput(jnp.concatenate([jnp.asarray(prompt_BxP), gen_BxG], axis=1), tokens_BxG,
                   cut_B.astype(jnp.int32), commit_BxG, passes)


@functools.partial(jax.jit, static_argnames=("static_model", "gen_length", "commits", "blocks",
                                             "remasking"))
def _dlm_loop(static_model, params, canvas_BxT, first_B, key, temperature, mask_id, banned_V, *,
              gen_length, commits, blocks, remasking):
  """(generated ids_BxG, commit step_BxG) of the canvas whose answers start at first_B."""
  model = static_model.model
  b, t = canvas_BxT.shape
  block_length = gen_length // (max(blocks) + 1)
  commits_S, blocks_S = jnp.asarray(commits, jnp.int32), jnp.asarray(blocks, jnp.int32)
  answer_BxT = jnp.arange(t)[None, :] - first_B[:, None]  # index within the answer
  visible_B = first_B + gen_length

  def denoise(step, state):
    canvas_BxT, step_BxT = state
    k_noise, k_order = jax.random.split(jax.random.fold_in(key, step))
    logits_BxTxV, _ = model.apply(params, canvas_BxT, causal=False, lengths_B=visible_B)
    logits_BxTxV = ban(logits_BxTxV, banned_V)
    # argmax(logits + T * Gumbel) draws from softmax(logits / T); T = 0 is the plain argmax
    # (a cond, not a where: greedy decoding never draws the B x T x V noise).
    predicted_BxT = jax.lax.cond(
        temperature > 0,
        lambda: jnp.argmax(logits_BxTxV + temperature
                           * jax.random.gumbel(k_noise, logits_BxTxV.shape), axis=-1),
        lambda: jnp.argmax(logits_BxTxV, axis=-1)).astype(jnp.int32)
    if remasking == "low_confidence":
      chosen_BxT = jnp.take_along_axis(logits_BxTxV, predicted_BxT[..., None], axis=-1)[..., 0]
      score_BxT = jnp.exp(chosen_BxT - jax.nn.logsumexp(logits_BxTxV, axis=-1))
    else:
      score_BxT = jax.random.uniform(k_order, (b, t))
    start = blocks_S[step] * block_length
    candidate_BxT = ((canvas_BxT == mask_id) & (answer_BxT >= start)
                     & (answer_BxT < start + block_length))
    score_BxT = jnp.where(candidate_BxT, score_BxT, -jnp.inf)
    rank_BxT = jnp.argsort(jnp.argsort(-score_BxT, axis=-1, stable=True), axis=-1)
    commit_BxT = candidate_BxT & (rank_BxT < commits_S[step])
    return (jnp.where(commit_BxT, predicted_BxT, canvas_BxT),
            jnp.where(commit_BxT, step, step_BxT))

  state = (canvas_BxT, jnp.full((b, t), -1, jnp.int32))
  canvas_BxT, step_BxT = jax.lax.fori_loop(0, len(commits), denoise, state)
  answer_BxG = first_B[:, None] + jnp.arange(gen_length)[None, :]
  return (jnp.take_along_axis(canvas_BxT, answer_BxG, axis=1),
          jnp.take_along_axis(step_BxT, answer_BxG, axis=1))
