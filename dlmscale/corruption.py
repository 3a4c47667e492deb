"""Corruption: what masked diffusion does to clean tokens before the network sees them.

The network never knows it is looking at corrupted input: the masked-diffusion objective,
held-out validation and the likelihood estimators all choose positions, hand them to
`mask_tokens`, and score the result with the weights it returns. How positions are chosen is
each caller's estimator (a rate t per sequence here; fixed counts and left-to-right chains in
evaluation/likelihood.py); how they are masked and weighted is written once, here.
"""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class Corrupted(NamedTuple):
  """inputs_BxL: tokens with masked positions replaced by the mask id; masked_BxL: bool;
  weights_BxL: float32 weight of each position's log-likelihood (0 where not masked)."""
  inputs_BxL: jax.Array
  masked_BxL: jax.Array
  weights_BxL: jax.Array


def mask_tokens(tokens_BxL, masked_BxL, mask_id: int, weight_B=None) -> Corrupted:
  """Replaces masked positions by mask_id; each masked position of row b weighs weight_B[b]
  (1 when None), e.g. 1/t for the masked-diffusion ELBO."""
  inputs_BxL = jnp.where(masked_BxL, mask_id, tokens_BxL)
  weights_BxL = masked_BxL.astype(jnp.float32)
  if weight_B is not None:
    weights_BxL = weights_BxL * weight_B[:, None]
  return Corrupted(inputs_BxL, masked_BxL, weights_BxL)


def rate_mask(key, t_B, shape, valid_BxL=None):
  """Each position masked independently with probability t_B[b] (only valid positions)."""
  masked_BxL = jax.random.uniform(key, shape) < t_B[:, None]
  return masked_BxL if valid_BxL is None else masked_BxL & valid_BxL


def sample_mask_times(rng, batch_size: int, eps: float, antithetic: bool):
  """t ~ U(eps, 1) per sequence; antithetic: one uniform shifted over a B-point grid (low variance)."""
  u = jax.random.uniform(rng, (batch_size,))
  if antithetic:
    u = jnp.mod(u[0] + jnp.arange(batch_size) / batch_size, 1.0)
  return eps + (1.0 - eps) * u


def stratified_times(u_B, k, num_samples: int, eps: float):
  """Sample k of num_samples per sequence: t = eps + (1 - eps) (k + u) / S (stratified)."""
  return eps + (1 - eps) * (k + u_B) / num_samples


def force_one_masked(rng, masked_BxL, valid_BxL):
  """Masks one random valid position in every row that has no masked token."""
  scores = jnp.where(valid_BxL, jax.random.uniform(rng, masked_BxL.shape), -1.0)
  pick_BxL = jax.nn.one_hot(jnp.argmax(scores, axis=-1), masked_BxL.shape[1], dtype=bool)
  empty_B = ~jnp.any(masked_BxL, axis=-1)
  return masked_BxL | (pick_BxL & empty_B[:, None])


def random_lengths(rng, batch_size: int, seq_len: int, prob: float):
  """With probability `prob` the whole batch is cut to one random length in [1, L]."""
  k_cut, k_len = jax.random.split(rng)
  cut = jax.random.bernoulli(k_cut, prob)
  length = jnp.where(cut, jax.random.randint(k_len, (), 1, seq_len + 1), seq_len)
  return jnp.full((batch_size,), length, jnp.int32)
