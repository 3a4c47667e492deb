"""Transformer building blocks (Flax NNX). Every parameter carries logical axis names.

Parameters are stored in `param_dtype` (fp32 master copy) and cast to the compute dtype at use.
Dropout takes an explicit key so that every jitted function stays a pure function of its inputs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def param(key, shape, axes, *, std=None, value=None, dtype=jnp.float32) -> nnx.Param:
  """A parameter with logical axis names; normal(std) when `std` is given, else `value`."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}")
  if std is not None:
    value = std * jax.random.normal(key, shape, dtype)
  return nnx.Param(jnp.asarray(value, dtype), out_sharding=tuple(axes), eager_sharding=False)


def dropout(x, rate: float, key):
  """Inverted dropout; identity when rate == 0 or no key is given."""
  if rate == 0.0 or key is None:
    return x
  keep = jax.random.bernoulli(key, 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0).astype(x.dtype)


class RMSNorm(nnx.Module):
  """Root-mean-square norm with a learned scale, computed in fp32."""

  def __init__(self, dim: int, axis_name: str, *, eps: float, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = param(None, (dim,), (axis_name,), value=jnp.ones((dim,)), dtype=param_dtype)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * inv_rms * self.scale[...]).astype(x.dtype)


def rope(x_BxLxNxH, positions_L, base: float):
  """Rotary position embedding (rotate-half form) applied to the last axis."""
  half = x_BxLxNxH.shape[-1] // 2
  freq_H2 = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle_LxH2 = positions_L[:, None].astype(jnp.float32) * freq_H2[None, :]
  sin, cos = jnp.sin(angle_LxH2)[None, :, None, :], jnp.cos(angle_LxH2)[None, :, None, :]
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


def attention_weights(q_BxLxNxH, k_BxSxKxH, *, causal: bool, lengths_B=None):
  """Softmax attention probabilities [B, N, L, S] in fp32; K kv heads are shared by N/K q heads."""
  b, l, n, h = q_BxLxNxH.shape
  s, kh = k_BxSxKxH.shape[1], k_BxSxKxH.shape[2]
  q_BxLxKxGxH = q_BxLxNxH.reshape(b, l, kh, n // kh, h)
  scores = jnp.einsum("blkgh,bskh->bkgls", q_BxLxKxGxH, k_BxSxKxH,
                      preferred_element_type=jnp.float32) / jnp.sqrt(h).astype(jnp.float32)
  allowed_LxS = jnp.ones((l, s), bool)
  if causal:
    allowed_LxS = jnp.tril(allowed_LxS)
  allowed = allowed_LxS[None, None, None]
  if lengths_B is not None:
    allowed = allowed & (jnp.arange(s)[None, None, None, None, :] < lengths_B[:, None, None, None, None])
  scores = jnp.where(allowed, scores, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1).reshape(b, n, l, s)


class Attention(nnx.Module):
  """Multi-head attention with optional grouped KV heads, per-head q/k RMSNorm and RoPE, no biases."""

  def __init__(self, cfg, key):
    d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    kq, kk, kv, ko = jax.random.split(key, 4)
    pd = cfg.param_dtype
    self.cfg = cfg
    self.wq = param(kq, (d, n, h), ("embed", "heads", "kv"), std=cfg.init_std, dtype=pd)
    self.wk = param(kk, (d, k, h), ("embed", "kv_heads", "kv"), std=cfg.init_std, dtype=pd)
    self.wv = param(kv, (d, k, h), ("embed", "kv_heads", "kv"), std=cfg.init_std, dtype=pd)
    self.wo = param(ko, (n, h, d), ("heads", "kv", "embed"), std=cfg.init_std, dtype=pd)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(h, "kv", eps=cfg.norm_eps, param_dtype=pd)
      self.k_norm = RMSNorm(h, "kv", eps=cfg.norm_eps, param_dtype=pd)

  def __call__(self, x_BxLxD, *, causal, lengths_B, dropout_rate, key):
    cfg, dt = self.cfg, x_BxLxD.dtype
    q = jnp.einsum("bld,dnh->blnh", x_BxLxD, self.wq[...].astype(dt))
    k = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.wk[...].astype(dt))
    v = jnp.einsum("bld,dkh->blkh", x_BxLxD, self.wv[...].astype(dt))
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    positions_L = jnp.arange(x_BxLxD.shape[1])
    q, k = rope(q, positions_L, cfg.rope_base), rope(k, positions_L, cfg.rope_base)
    probs_BxNxLxS = attention_weights(q, k, causal=causal, lengths_B=lengths_B)
    probs_BxNxLxS = dropout(probs_BxNxLxS, dropout_rate, key).astype(dt)
    b, l, n, h = q.shape
    kh = k.shape[2]
    probs = probs_BxNxLxS.reshape(b, kh, n // kh, l, -1)
    out_BxLxNxH = jnp.einsum("bkgls,bskh->blkgh", probs, v).reshape(b, l, n, h)
    return jnp.einsum("blnh,nhd->bld", out_BxLxNxH, self.wo[...].astype(dt))


class SwiGLU(nnx.Module):
  """Gated feed-forward: down(silu(gate(x)) * up(x)), no biases."""

  def __init__(self, cfg, key):
    d, f, pd = cfg.d_model, cfg.d_ff, cfg.param_dtype
    kg, ku, kd = jax.random.split(key, 3)
    self.w_gate = param(kg, (d, f), ("embed", "mlp"), std=cfg.init_std, dtype=pd)
    self.w_up = param(ku, (d, f), ("embed", "mlp"), std=cfg.init_std, dtype=pd)
    self.w_down = param(kd, (f, d), ("mlp", "embed"), std=cfg.init_std, dtype=pd)

  def __call__(self, x_BxLxD, *, dropout_rate=0.0, key=None):
    dt = x_BxLxD.dtype
    gate_BxLxF = jnp.einsum("bld,df->blf", x_BxLxD, self.w_gate[...].astype(dt))
    up_BxLxF = jnp.einsum("bld,df->blf", x_BxLxD, self.w_up[...].astype(dt))
    h_BxLxF = dropout(jax.nn.silu(gate_BxLxF) * up_BxLxF, dropout_rate, key)
    return jnp.einsum("blf,fd->bld", h_BxLxF, self.w_down[...].astype(dt))
