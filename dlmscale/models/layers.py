"""Transformer building blocks (Flax NNX). Every parameter carries logical axis names.

Parameters are stored in `param_dtype` (fp32 master copy) and cast to the compute dtype at use.
Dropout takes an explicit key so that every jitted function stays a pure function of its inputs.
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.ad_checkpoint import checkpoint_name

from dlmscale import parallel
from dlmscale.models import chunked_attention, splash
from dlmscale.models.dropout import dropout


def param(key, shape, axes, *, std=None, value=None, dtype=jnp.float32) -> nnx.Param:
  """A parameter with logical axis names; normal(std) when `std` is given, else `value`."""
  if len(axes) != len(shape):
    raise ValueError(f"axes {axes} do not match shape {shape}")
  if std is not None:
    value = std * jax.random.normal(key, shape, dtype)
  return nnx.Param(jnp.asarray(value, dtype), out_sharding=tuple(axes), eager_sharding=False)


def linear(x, w, contract: int = 1):
  """x's last `contract` axes times w's first `contract` axes, as one 2-D matmul.

  Same result as the einsum, but XLA:CPU lays out the backward pass of a 2-D dot without the
  transposed copies it makes for an einsum over [B, L, ...] (1.6x faster SwiGLU fwd + bwd)."""
  lead, inner = x.shape[:x.ndim - contract], x.shape[x.ndim - contract:]
  if w.shape[:contract] != inner:
    raise ValueError(f"linear: {x.shape} does not contract with {w.shape}")
  out = jnp.dot(x.reshape(-1, math.prod(inner)), w.reshape(math.prod(inner), -1))
  return out.reshape(*lead, *w.shape[contract:])


class RMSNorm(nnx.Module):
  """Root-mean-square norm with a learned scale, computed in fp32."""

  def __init__(self, dim: int, axis_name: str, *, eps: float, param_dtype=jnp.float32):
    self.eps = eps
    self.scale = param(None, (dim,), (axis_name,), value=jnp.ones((dim,)), dtype=param_dtype)

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    inv_rms = jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * inv_rms * self.scale[...]).astype(x.dtype)


def rope(x_BxLxNxH, positions, base: float):
  """Rotary position embedding (rotate-half form) applied to the last axis.

  positions: [L] shared by every row, or [B, L] per row (left-padded rows of a KV cache)."""
  half = x_BxLxNxH.shape[-1] // 2
  freq_H2 = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angle = positions[..., None].astype(jnp.float32) * freq_H2
  angle_BxLxH2 = angle if angle.ndim == 3 else angle[None]
  sin, cos = jnp.sin(angle_BxLxH2)[:, :, None, :], jnp.cos(angle_BxLxH2)[:, :, None, :]
  x1, x2 = jnp.split(x_BxLxNxH.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x_BxLxNxH.dtype)


def _scores(q_BxLxNxH, k_BxSxKxH):
  """Scaled fp32 dot products [B, K, G, L, S]; K kv heads are shared by G = N/K q heads."""
  b, l, n, h = q_BxLxNxH.shape
  kh = k_BxSxKxH.shape[2]
  q_BxLxKxGxH = q_BxLxNxH.reshape(b, l, kh, n // kh, h)
  return jnp.einsum("blkgh,bskh->bkgls", q_BxLxKxGxH, k_BxSxKxH,
                    preferred_element_type=jnp.float32) / jnp.sqrt(h).astype(jnp.float32)


def _masked_softmax(scores_BxKxGxLxS, allowed):
  """Softmax over keys where `allowed` (broadcast to the scores), as [B, N, L, S]."""
  b, kh, g, l, s = scores_BxKxGxLxS.shape
  scores = jnp.where(allowed, scores_BxKxGxLxS, jnp.finfo(jnp.float32).min)
  return jax.nn.softmax(scores, axis=-1).reshape(b, kh * g, l, s)


def attention_weights(q_BxLxNxH, k_BxSxKxH, *, causal: bool, lengths_B=None):
  """Softmax attention probabilities [B, N, L, S] in fp32; K kv heads are shared by N/K q heads."""
  l, s = q_BxLxNxH.shape[1], k_BxSxKxH.shape[1]
  scores = _scores(q_BxLxNxH, k_BxSxKxH)
  allowed_LxS = jnp.ones((l, s), bool)
  if causal:
    allowed_LxS = jnp.tril(allowed_LxS)
  allowed = allowed_LxS[None, None, None]
  if lengths_B is not None:
    keys_S = jnp.arange(s)
    allowed = allowed & (keys_S[None, None, None, None, :] < lengths_B[:, None, None, None, None])
  return _masked_softmax(scores, allowed)


# The checkpoint names of attention's output (every implementation) and of the chunked and splash
# paths' logsumexp: what a remat policy keeps so that attention's backward pass needs no L x S
# residual.
SAVED_ATTENTION = (chunked_attention.OUTPUT_NAME, chunked_attention.LSE_NAME)
ATTENTION_IMPLS = ("auto", "einsum", "chunked", "xla", "cudnn", "splash")


def attention_impl(choice: str, dtype, head_dim: int, dropout_rate: float, seq_len: int) -> str:
  """The attention implementation for the training forward pass: 'einsum' (explicit fp32
  probabilities for all heads at once), 'chunked' (one kv head at a time with a flash-style
  backward pass: models/chunked_attention.py; both take attention dropout),
  jax.nn.dot_product_attention's 'xla' / 'cudnn' (flash attention on NVIDIA GPUs: bf16/fp16,
  head_dim <= 128), or 'splash' (Pallas's flash kernel on TPU under shard_map: models/splash.py;
  interpreted elsewhere, for tests).

  'auto' picks cudnn on GPU where it applies; splash where the training or sampling mesh is TPU
  chips (compile mode's too) and the length is whole 128-row tiles; else 'chunked_on_cpu':
  chunked where the program is lowered for CPU (2-3x faster attention there: the einsum path's
  [B, N, L, S] sweeps through memory dominate), einsum elsewhere."""
  if choice in ("xla", "cudnn", "splash") and dropout_rate:
    return "einsum"  # none of them takes dropout on the probabilities
  if choice == "splash" and parallel.activation_context() is None and jax.device_count() > 1:
    # A Pallas kernel runs under shard_map, which needs the mesh that training and sampling
    # trace under; validation and scoring trace without one.
    return "einsum"
  if choice != "auto":
    return choice
  if (jax.default_backend() == "gpu" and jnp.dtype(dtype) in (jnp.bfloat16, jnp.float16)
      and head_dim <= 128 and not dropout_rate):
    return "cudnn"
  if (parallel.activation_context() is not None and splash.platform() == "tpu"
      and splash.fits(seq_len) and not dropout_rate):
    return "splash"
  return "chunked_on_cpu"


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

  def _project(self, x_BxLxD, positions):
    """q [B, L, N, H], k and v [B, L, K, H] in x's dtype, q and k normed and rotated."""
    cfg, dt = self.cfg, x_BxLxD.dtype
    q = linear(x_BxLxD, self.wq[...].astype(dt))
    k = linear(x_BxLxD, self.wk[...].astype(dt))
    v = linear(x_BxLxD, self.wv[...].astype(dt))
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    return rope(q, positions, cfg.rope_base), rope(k, positions, cfg.rope_base), v

  def _output(self, probs_BxNxLxS, v_BxSxKxH):
    b, n, l, _ = probs_BxNxLxS.shape
    kh, h = v_BxSxKxH.shape[2], v_BxSxKxH.shape[3]
    probs = probs_BxNxLxS.reshape(b, kh, n // kh, l, -1)
    return jnp.einsum("bkgls,bskh->blkgh", probs, v_BxSxKxH).reshape(b, l, n, h)

  def __call__(self, x_BxLxD, *, causal, lengths_B, dropout_rate, key):
    q, k, v = self._project(x_BxLxD, jnp.arange(x_BxLxD.shape[1]))
    impl = attention_impl(self.cfg.attention, x_BxLxD.dtype, self.cfg.head_dim, dropout_rate,
                          x_BxLxD.shape[1])
    if impl in ("chunked", "chunked_on_cpu"):
      chunked = lambda q, k, v, lengths_B: chunked_attention.attention(
          q, k, v, lengths_B, causal=causal, dropout_rate=dropout_rate, key=key)
      if impl == "chunked":
        out_BxLxNxH = chunked(q, k, v, lengths_B)
      else:
        out_BxLxNxH = jax.lax.platform_dependent(
            q, k, v, lengths_B, cpu=chunked,
            default=lambda *a: self._einsum_attention(*a, causal, dropout_rate, key))
      return linear(out_BxLxNxH, self.wo[...].astype(x_BxLxD.dtype), contract=2)
    if impl == "splash":
      out_BxLxNxH = splash.attention(q, k, v, lengths_B, causal=causal)
    elif impl != "einsum":
      out_BxLxNxH = checkpoint_name(jax.nn.dot_product_attention(
          q, k, v, is_causal=causal, implementation=impl,
          key_value_seq_lengths=None if lengths_B is None else lengths_B.astype(jnp.int32)),
          chunked_attention.OUTPUT_NAME)
    else:
      out_BxLxNxH = self._einsum_attention(q, k, v, lengths_B, causal, dropout_rate, key)
    return linear(out_BxLxNxH, self.wo[...].astype(x_BxLxD.dtype), contract=2)

  def _einsum_attention(self, q, k, v, lengths_B, causal, dropout_rate, key):
    """[B, L, N, H] through explicit fp32 probabilities of all heads at once."""
    probs_BxNxLxS = attention_weights(q, k, causal=causal, lengths_B=lengths_B)
    probs_BxNxLxS = dropout(probs_BxNxLxS, dropout_rate, key).astype(v.dtype)
    return checkpoint_name(self._output(probs_BxNxLxS, v), chunked_attention.OUTPUT_NAME)

  def attend(self, x_BxTxD, positions_BxT, allowed_BxTxT, cache=None):
    """Inference attention of T new tokens (no dropout) to each other and to cached keys.

    positions_BxT: their absolute (RoPE) positions; allowed_BxTxT: which new tokens each may see.
    cache: None, or (k_BxKxSxH, v_BxKxSxH, allowed_BxTxS), the cached slots each new token may see
    (never the slots the new tokens will be written to: their fresh keys are the new columns).
    Returns (y_BxTxD, k_BxKxTxH, v_BxKxTxH): the output and the new tokens' keys and values, in
    the cache's slots-after-heads layout (a decode step's dot products then read each head's
    slots contiguously, with no transposed copy of the cache)."""
    b, t, _ = x_BxTxD.shape
    q, k, v = self._project(x_BxTxD, positions_BxT)
    n, h = q.shape[2], q.shape[3]
    kh = k.shape[2]
    dt = x_BxTxD.dtype if cache is None else cache[0].dtype
    k_BxKxTxH, v_BxKxTxH = (a.astype(dt).transpose(0, 2, 1, 3) for a in (k, v))
    q_BxKxGxTxH = q.reshape(b, t, kh, n // kh, h).transpose(0, 2, 3, 1, 4)
    scale = jnp.sqrt(h).astype(jnp.float32)
    scores = jnp.einsum("bkgth,bkuh->bkgtu", q_BxKxGxTxH, k_BxKxTxH,
                        preferred_element_type=jnp.float32) / scale
    allowed = allowed_BxTxT[:, None, None]
    values = [v_BxKxTxH]
    if cache is not None:
      k_BxKxSxH, v_BxKxSxH, allowed_BxTxS = cache
      cached = jnp.einsum("bkgth,bksh->bkgts", q_BxKxGxTxH, k_BxKxSxH,
                          preferred_element_type=jnp.float32) / scale
      scores = jnp.concatenate([cached, scores], axis=-1)
      allowed = jnp.concatenate([allowed_BxTxS[:, None, None], allowed], axis=-1)
      values = [v_BxKxSxH, v_BxKxTxH]
    probs = _masked_softmax(scores, allowed).reshape(*scores.shape).astype(x_BxTxD.dtype)
    out_BxKxGxTxH, start = 0, 0
    for v_BxKxSxH in values:  # the cached slots' share, then the new tokens', summed in fp32
      s = v_BxKxSxH.shape[2]
      out_BxKxGxTxH += jnp.einsum("bkgts,bksh->bkgth", probs[..., start:start + s],
                                  v_BxKxSxH.astype(x_BxTxD.dtype),
                                  preferred_element_type=jnp.float32)
      start += s
    out_BxTxNxH = out_BxKxGxTxH.astype(x_BxTxD.dtype).transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)
    y_BxTxD = linear(out_BxTxNxH, self.wo[...].astype(x_BxTxD.dtype), contract=2)
    return y_BxTxD, k_BxKxTxH, v_BxKxTxH


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
    gate_BxLxF = linear(x_BxLxD, self.w_gate[...].astype(dt))
    up_BxLxF = linear(x_BxLxD, self.w_up[...].astype(dt))
    h_BxLxF = dropout(jax.nn.silu(gate_BxLxF) * up_BxLxF, dropout_rate, key)
    return linear(h_BxLxF, self.w_down[...].astype(dt))
