"""Log-likelihood of a continuation given a context, on padded token batches (pure, jittable).

A batch holds B requests, each `context + continuation` right-padded to L: row b's continuation
occupies positions [cont_start_B[b], lengths_B[b]) and its context [0, cont_start_B[b]) (at least
one token; the eod id stands in for an empty context). Padding never changes a result: AR
attention is causal, and DLM attention masks keys at or past `lengths_B`.

AR: the exact sum of log-softmax of the continuation tokens, and whether each is the argmax.
DLM: a Monte Carlo lower bound on log p(continuation | context) with the context never masked:
  'iid'         every continuation token masked with probability t, t_k = max((k + u) / S, eps)
                stratified over the S samples, weight 1 / t;
  'fixed_count' (LLaDA) l ~ U{1..L} tokens masked uniformly without replacement, weight L / l,
                l = 1 + floor(L (k + u) / S) stratified (each l exactly S / L times when L | S);
  'chain'       left to right: pass i masks continuation positions i..L-1 and scores position i
                (L passes, deterministic, stderr 0).
Each sample's value is sum over masked positions of weight * log p(target); the estimate is
the samples' mean and its stderr std(ddof=1) / sqrt(S) (stratification makes this conservative).
A single-token continuation is scored exactly by one pass with it masked (stderr 0). Randomness
is drawn per request from `request_ids_B` and per sample and continuation-relative position, so
a request's estimate does not depend on its batch, row, padding or `samples_per_pass`.

Unsupervised classifier-free guidance (weight w > 0): logits = (1 + w) logits(x) - w logits(x
with the context replaced by mask tokens), before the log-softmax (SMDM / LLaDA).

Only continuation positions are ever scored, so the network runs without its head and the
vocabulary projection (fp32) covers a static window of `max_cont_len` positions after each row's
cont_start, not all L: with a 50k-151k vocabulary and short continuations that is most of the
head's FLOPs and nearly all of the [rows, L, V] logits memory.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from dlmscale.corruption import mask_tokens
from dlmscale.errors import ConfigError
from dlmscale.models.cross_entropy import HeadInput
from dlmscale.objectives import token_cross_entropy
from dlmscale.parallel import constrain

ESTIMATORS = ("iid", "fixed_count", "chain")


def check_estimator(estimator: str) -> None:
  if estimator not in ESTIMATORS:
    raise ConfigError(f"unknown DLM likelihood estimator {estimator!r}: use one of "
                      f"{list(ESTIMATORS)}")


def continuation_mask(cont_start_B, lengths_B, length: int):
  """[B, length] bool: True on continuation positions."""
  pos_L = jnp.arange(length)
  return (pos_L[None] >= cont_start_B[:, None]) & (pos_L[None] < lengths_B[:, None])


def ar_loglikelihood(model, params, tokens_BxL, cont_start_B, lengths_B):
  """Exact AR log p(continuation | context) per row, and whether greedy decoding reproduces it.

  Returns (logprob_B, greedy_B); position j is predicted by the causal logits at j - 1, so a row's
  last token is never an input that matters (a row may hold seq_len + 1 tokens)."""
  logits_BxLxV, _ = model.apply(params, tokens_BxL, causal=True, lengths_B=lengths_B)
  logp_BxL1 = -token_cross_entropy(logits_BxLxV[:, :-1], tokens_BxL[:, 1:])
  scored_BxL1 = continuation_mask(cont_start_B, lengths_B, tokens_BxL.shape[1])[:, 1:]
  hit_BxL1 = jnp.argmax(logits_BxLxV[:, :-1], axis=-1) == tokens_BxL[:, 1:]
  return ((logp_BxL1 * scored_BxL1).sum(-1), jnp.all(hit_BxL1 | ~scored_BxL1, axis=-1))


def window_positions(cont_start_B, window: int, length: int):
  """[B, W] positions cont_start + w, clipped to the row: the head runs only on these."""
  return jnp.minimum(cont_start_B[:, None] + jnp.arange(window)[None], length - 1)


def _project(head: HeadInput, pos_BxW):
  """fp32 logits [B, W, V] at the given positions only (the vocabulary projection dominates the
  forward pass's FLOPs when V is large and the continuation short)."""
  x_BxWxD = jnp.take_along_axis(head.x_BxLxD, pos_BxW[..., None], axis=1)
  logits_BxWxV = jnp.einsum("bwd,dv->bwv", x_BxWxD, head.w_DxV,
                            preferred_element_type=jnp.float32)
  return constrain(logits_BxWxV, ("batch", None, "vocab"))


def guided_logits(model, params, inputs_BxL, context_BxL, lengths_B, pos_BxW, *, mask_id: int,
                  cfg_scale: float):
  """Bidirectional logits [B, W, V] at pos_BxW; with weight w > 0: (1+w) cond - w uncond (the
  context masked)."""
  if cfg_scale == 0:
    head, _ = model.apply(params, inputs_BxL, causal=False, lengths_B=lengths_B, head=False)
    return _project(head, pos_BxW)
  b, l = inputs_BxL.shape
  uncond_BxL = jnp.where(context_BxL, mask_id, inputs_BxL)
  # Interleaved rows keep each request's two passes on the device that holds the request.
  both_2BxL = jnp.stack([inputs_BxL, uncond_BxL], axis=1).reshape(2 * b, l)
  head, _ = model.apply(params, both_2BxL, causal=False, lengths_B=jnp.repeat(lengths_B, 2),
                        head=False)
  logits_Bx2xWxV = _project(head, jnp.repeat(pos_BxW, 2, axis=0)).reshape(b, 2, *pos_BxW.shape[1:],
                                                                         -1)
  return (1 + cfg_scale) * logits_Bx2xWxV[:, 0] - cfg_scale * logits_Bx2xWxV[:, 1]


def masked_logprobs(model, params, tokens_BxL, masked_BxL, cont_start_B, lengths_B, *,
                    window: int, mask_id: int, cfg_scale: float, with_argmax: bool = False):
  """log p(target) [B, W] at positions cont_start + w (w < window) with `masked_BxL` positions
  replaced by the mask id, and (with_argmax) the argmax ids [B, W], else None."""
  l = tokens_BxL.shape[1]
  context_BxL = jnp.arange(l)[None] < cont_start_B[:, None]
  inputs_BxL = mask_tokens(tokens_BxL, masked_BxL, mask_id).inputs_BxL
  pos_BxW = window_positions(cont_start_B, window, l)
  logits_BxWxV = guided_logits(model, params, inputs_BxL, context_BxL, lengths_B, pos_BxW,
                               mask_id=mask_id, cfg_scale=cfg_scale)
  targets_BxW = jnp.take_along_axis(tokens_BxL, pos_BxW, axis=1)
  logp_BxW = -token_cross_entropy(logits_BxWxV, targets_BxW)
  return logp_BxW, (jnp.argmax(logits_BxWxV, axis=-1) if with_argmax else None)


def _position_uniforms(key, rel_pos_L):
  """One U(0, 1) per position, the rel_pos-th of the key's stream: with partitionable threefry
  (jax's default) element j of a key's draw depends on j alone, not on the padded length."""
  return jax.random.uniform(key, rel_pos_L.shape)[rel_pos_L]


def sample_masks(estimator: str, row_keys_B, draws_G, cont_BxL, cont_start_B, *,
                 num_samples: int, eps: float):
  """(masked_BxGxL, scored_BxGxL, weight_BxG) of the draws `draws_G` (global sample indices, or
  pass indices for 'chain'); a draw's value is sum over scored positions of weight * log p."""
  b, l = cont_BxL.shape
  cont_len_B = jnp.maximum(cont_BxL.sum(-1), 1)
  rel_pos_BxL = jnp.maximum(jnp.arange(l)[None] - cont_start_B[:, None], 0)
  if estimator == "chain":
    masked = cont_BxL[:, None] & (rel_pos_BxL[:, None] >= draws_G[None, :, None])
    scored = cont_BxL[:, None] & (rel_pos_BxL[:, None] == draws_G[None, :, None])
    return masked, scored, jnp.ones((b, draws_G.shape[0]), jnp.float32)
  strat_keys_B, draw_keys_B = jax.vmap(jax.random.split, out_axes=1)(row_keys_B)
  u_B = jax.vmap(jax.random.uniform)(strat_keys_B)
  s_BxG = (draws_G[None, :] + u_B[:, None]) / num_samples
  fold_draws = lambda key: jax.vmap(lambda d: jax.random.fold_in(key, d))(draws_G)
  keys_BxG = jax.vmap(fold_draws)(draw_keys_B)
  uniforms_BxGxL = jax.vmap(jax.vmap(_position_uniforms, (0, None)))(keys_BxG, rel_pos_BxL)
  if estimator == "iid":
    t_BxG = jnp.maximum(s_BxG, eps)
    masked = cont_BxL[:, None] & (uniforms_BxGxL < t_BxG[..., None])
    return masked, masked, 1.0 / t_BxG
  count_BxG = jnp.clip(jnp.floor(cont_len_B[:, None] * s_BxG).astype(jnp.int32) + 1, 1,
                       cont_len_B[:, None])
  # Rank of each continuation position among the row's continuation positions by its uniform:
  # the `count` lowest ranks form a uniformly random subset of that size.
  order_BxGxL = jnp.where(cont_BxL[:, None], uniforms_BxGxL, 2.0)
  rank_BxGxL = jnp.argsort(jnp.argsort(order_BxGxL, axis=-1), axis=-1)
  masked = cont_BxL[:, None] & (rank_BxGxL < count_BxG[..., None])
  return masked, masked, cont_len_B[:, None] / count_BxG


def dlm_loglikelihood(model, params, tokens_BxL, cont_start_B, lengths_B, request_ids_B, rng, *,
                      estimator: str = "fixed_count", num_samples: int = 128,
                      samples_per_pass: int = 1, max_cont_len: int | None = None,
                      mask_id: int, cfg_scale: float = 0.0, eps: float = 1e-3):
  """DLM lower bound on log p(continuation | context) per row.

  Returns a dict of mean_B, stderr_B, greedy_B (with the whole continuation masked, the one-pass
  argmax equals the target at every continuation position) and samples_BxS (per-sample values;
  for 'chain', the per-pass log-probabilities). Each forward pass holds B * samples_per_pass rows
  (twice that with guidance); 'chain' makes ceil(max_cont_len / samples_per_pass) such passes,
  the others num_samples / samples_per_pass (which must divide).

  max_cont_len (default: L) is the window W of positions after cont_start where logits are
  computed, so it must hold every row's continuation: a longer one gives NaN, never a silently
  truncated bound."""
  check_estimator(estimator)
  b, l = tokens_BxL.shape
  g = samples_per_pass
  w = max_cont_len or l
  cont_BxL = continuation_mask(cont_start_B, lengths_B, l)
  cont_len_B = cont_BxL.sum(-1)
  # Masks are drawn in window coordinates (position w is continuation token w); draws depend
  # on the continuation-relative position only, so this is the same draw as on the full row.
  cont_BxW = jnp.arange(w)[None] < cont_len_B[:, None]
  zeros_B = jnp.zeros_like(cont_start_B)
  # Full-row index of window position w, for carrying a window mask back onto the row.
  rel_BxL = jnp.clip(jnp.arange(l)[None] - cont_start_B[:, None], 0, w - 1)
  kw = dict(window=w, mask_id=mask_id, cfg_scale=cfg_scale)
  # One pass with the whole continuation masked: greedy, and the exact single-token score.
  full_logp_BxW, argmax_BxW = masked_logprobs(model, params, tokens_BxL, cont_BxL, cont_start_B,
                                              lengths_B, with_argmax=True, **kw)
  targets_BxW = jnp.take_along_axis(tokens_BxL, window_positions(cont_start_B, w, l), axis=1)
  greedy_B = jnp.all((argmax_BxW == targets_BxW) | ~cont_BxW, axis=-1)
  single_B = (full_logp_BxW * cont_BxW).sum(-1)

  if estimator == "chain":
    num_draws = -(-w // g) * g
  elif num_samples % g:
    raise ConfigError(f"samples_per_pass={g} does not divide num_samples={num_samples}: pick a "
                      "divisor")
  else:
    num_draws = num_samples
  row_keys_B = jax.vmap(lambda i: jax.random.fold_in(rng, i))(request_ids_B)
  tile = lambda x_B: jnp.repeat(x_B, g, axis=0)

  def one_pass(_, draws_G):
    masked_BxGxW, scored_BxGxW, weight_BxG = sample_masks(
        estimator, row_keys_B, draws_G, cont_BxW, zeros_B, num_samples=num_samples, eps=eps)
    masked_BGxL = (jnp.take_along_axis(masked_BxGxW.reshape(b * g, w), tile(rel_BxL), axis=1)
                   & tile(cont_BxL))
    logp_BGxW, _ = masked_logprobs(model, params, tile(tokens_BxL), masked_BGxL,
                                   tile(cont_start_B), tile(lengths_B), **kw)
    value_BxG = (logp_BGxW.reshape(b, g, w) * scored_BxGxW).sum(-1) * weight_BxG
    return None, value_BxG

  _, values_PxBxG = jax.lax.scan(one_pass, None, jnp.arange(num_draws).reshape(-1, g))
  samples_BxS = jnp.moveaxis(values_PxBxG, 0, 1).reshape(b, num_draws)
  if estimator == "chain":
    mean_B, stderr_B = samples_BxS.sum(-1), jnp.zeros((b,), jnp.float32)
  else:
    mean_B = samples_BxS.mean(-1)
    stderr_B = (samples_BxS.std(-1, ddof=1) / jnp.sqrt(num_samples) if num_samples > 1
                else jnp.full((b,), jnp.nan, jnp.float32))
  exact_B = cont_len_B <= 1
  fits_B = cont_len_B <= w
  mean_B = jnp.where(exact_B, single_B, mean_B)
  return {"mean_B": jnp.where(fits_B, mean_B, jnp.nan),
          "stderr_B": jnp.where(fits_B, jnp.where(exact_B, 0.0, stderr_B), jnp.nan),
          "greedy_B": greedy_B & fits_B, "samples_BxS": samples_BxS}
