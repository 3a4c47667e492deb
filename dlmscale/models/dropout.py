"""Inverted dropout with explicit keys (every jitted function stays pure)."""
from __future__ import annotations

import jax
import jax.numpy as jnp


def dropout(x, rate: float, key):
  """Inverted dropout; identity when rate == 0 or no key is given.

  The random bits are most of dropout's cost on CPU, so each 32-bit draw decides two adjacent
  elements of the last axis (16 bits each: the keep probability is 1 - rate to within 2^-17).
  Adjacent pairs keep a sharded last axis local."""
  if rate == 0.0 or key is None:
    return x
  return jnp.where(keep_mask(key, rate, x.shape), x / (1.0 - rate), 0).astype(x.dtype)


def keep_mask(key, rate: float, shape):
  """Bool mask, True with probability 1 - rate (see `dropout` for how the bits are drawn)."""
  *lead, d = shape
  if d % 2:
    return jax.random.bernoulli(key, 1.0 - rate, shape)
  bits = jax.random.bits(key, (*lead, d // 2), jnp.uint32)
  u16 = jnp.stack([bits >> 16, bits & 0xFFFF], axis=-1).reshape(shape)
  return u16 < jnp.uint32(round((1.0 - rate) * 65536))
