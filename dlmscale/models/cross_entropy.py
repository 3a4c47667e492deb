"""Cross-entropy over the vocabulary without materialising the [B, L, V] logits.

`HeadInput(x_BxLxD, w_DxV)` is what the network returns with `head=False`: the final-normed
hidden states and the output projection. `cross_entropy` takes either that or plain logits and
returns the same three things: the weighted loss sum_i w_i ce_i (differentiable), the per-token
ce_BxL and whether the argmax is the target (both for metrics, no gradient).

From a HeadInput the logits are computed a chunk of sequence positions at a time (all rows of the
batch, so the batch axis keeps its sharding); the gradient of the loss is computed in the same
pass, as (softmax - onehot) * w against the chunk (the loss is linear in the cotangent, so the
backward only scales it), which saves recomputing the logits in the backward pass. Peak memory
is one [B, C, V] fp32 chunk instead of the full logits and their gradient.
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

# Target fp32 logits elements per chunk (16 MiB): big enough for efficient matmuls, small
# enough that a chunk's logits, probabilities and gradient stay out of the memory budget.
CHUNK_ELEMENTS = 2**22


class HeadInput(NamedTuple):
  """The network's output before the vocabulary projection."""
  x_BxLxD: jax.Array  # final-normed hidden states, compute dtype
  w_DxV: jax.Array  # output projection, compute dtype

  def logits(self):
    """The full fp32 logits (for callers that need them all)."""
    return jnp.einsum("bld,dv->blv", self.x_BxLxD, self.w_DxV, preferred_element_type=jnp.float32)

  def shifted(self):
    """Positions 0..L-2 only (their targets are the next tokens)."""
    return HeadInput(self.x_BxLxD[:, :-1], self.w_DxV)


def cross_entropy(out, targets_BxL, weights_BxL):
  """(loss = sum(weights * ce), ce_BxL fp32, hit_BxL bool) from logits_BxLxV or a HeadInput.

  Only `loss` carries gradients (to the logits or to x and w, and to the weights)."""
  if isinstance(out, HeadInput):
    return chunked_cross_entropy(out.x_BxLxD, out.w_DxV, targets_BxL, weights_BxL)
  logits = out.astype(jnp.float32)
  label_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  ce_BxL = jax.nn.logsumexp(logits, axis=-1) - label_logit
  hit_BxL = jnp.argmax(logits, axis=-1) == targets_BxL
  loss = jnp.sum(ce_BxL * weights_BxL)
  return loss, jax.lax.stop_gradient(ce_BxL), hit_BxL


def chunk_length(b: int, l: int, v: int, elements: int = CHUNK_ELEMENTS) -> int:
  """Positions per chunk: about `elements` logits per chunk, at least 1, at most l."""
  return int(min(l, max(1, elements // max(b * v, 1))))


def chunked_cross_entropy(x_BxLxD, w_DxV, targets_BxL, weights_BxL, chunk: int = 0):
  """cross_entropy of logits x @ w, a chunk of `chunk` positions at a time (0: chunk_length)."""
  b, l, _ = x_BxLxD.shape
  chunk = chunk or chunk_length(b, l, w_DxV.shape[1])
  loss, ce_BxL, hit_BxL = _fused(x_BxLxD, w_DxV, targets_BxL, weights_BxL.astype(jnp.float32),
                                 chunk)
  return loss, jax.lax.stop_gradient(ce_BxL), hit_BxL


def _split(a_BxL_, chunk: int):
  """[B, L, ...] -> [n, B, chunk, ...], zero-padded at the end of L to n * chunk."""
  b, l = a_BxL_.shape[:2]
  n = -(-l // chunk)
  pad = [(0, 0), (0, n * chunk - l)] + [(0, 0)] * (a_BxL_.ndim - 2)
  a = jnp.pad(a_BxL_, pad)
  return jnp.moveaxis(a.reshape(b, n, chunk, *a_BxL_.shape[2:]), 1, 0)


def _merge(a_NxBxC_, l: int):
  """Inverse of _split: [n, B, chunk, ...] -> [B, L, ...]."""
  n, b, c = a_NxBxC_.shape[:3]
  return jnp.moveaxis(a_NxBxC_, 0, 1).reshape(b, n * c, *a_NxBxC_.shape[3:])[:, :l]


def _chunk_stats(x_BxCxD, w_DxV, t_BxC):
  """One chunk's fp32 logits shifted by their max, the sum of their exps, ce and argmax hits.

  The max and the exps are computed once and shared by the logsumexp, the hit test and the
  softmax of the gradient. A hit is `label logit == max logit` (the argmax, up to exact ties)."""
  b, c, d = x_BxCxD.shape
  logits_BxCxV = jnp.dot(x_BxCxD.reshape(b * c, d), w_DxV,
                         preferred_element_type=jnp.float32).reshape(b, c, -1)
  max_BxC = jnp.max(logits_BxCxV, axis=-1)
  shifted_BxCxV = logits_BxCxV - max_BxC[..., None]
  exp_BxCxV = jnp.exp(shifted_BxCxV)
  sum_BxC = jnp.sum(exp_BxCxV, axis=-1)
  label_BxC = jnp.take_along_axis(shifted_BxCxV, t_BxC[..., None], axis=-1)[..., 0]
  return exp_BxCxV, sum_BxC, jnp.log(sum_BxC) - label_BxC, label_BxC >= 0


def _forward(x_BxLxD, w_DxV, targets_BxL, weights_BxL, chunk, with_grad: bool):
  l = x_BxLxD.shape[1]
  xs = (_split(x_BxLxD, chunk), _split(targets_BxL, chunk), _split(weights_BxL, chunk))

  def body(dw_DxV, xs):
    x_BxCxD, t_BxC, wt_BxC = xs
    exp_BxCxV, sum_BxC, ce_BxC, hit_BxC = _chunk_stats(x_BxCxD, w_DxV, t_BxC)
    if not with_grad:
      return dw_DxV, (ce_BxC, hit_BxC)
    # d(sum wt * ce)/d logits = wt * (softmax - onehot(target)).
    b, c, d = x_BxCxD.shape
    onehot_BxCxV = jax.nn.one_hot(t_BxC, w_DxV.shape[1], dtype=jnp.float32)
    g_BxCxV = (exp_BxCxV * (wt_BxC / sum_BxC)[..., None]
               - onehot_BxCxV * wt_BxC[..., None]).astype(x_BxCxD.dtype)
    g_BCxV, x_BCxD = g_BxCxV.reshape(b * c, -1), x_BxCxD.reshape(b * c, d)
    dx_BxCxD = jnp.dot(g_BCxV, w_DxV.T).reshape(b, c, d)
    dw_DxV = dw_DxV + jnp.dot(x_BCxD.T, g_BCxV, preferred_element_type=jnp.float32)
    return dw_DxV, (ce_BxC, hit_BxC, dx_BxCxD)

  dw0 = jnp.zeros(w_DxV.shape, jnp.float32)
  dw_DxV, per_chunk = jax.lax.scan(body, dw0, xs)
  ce_BxL, hit_BxL = _merge(per_chunk[0], l), _merge(per_chunk[1], l)
  loss = jnp.sum(ce_BxL * weights_BxL)
  if not with_grad:
    return loss, ce_BxL, hit_BxL
  return loss, ce_BxL, hit_BxL, _merge(per_chunk[2], l), dw_DxV


@functools.partial(jax.custom_vjp, nondiff_argnums=(4,))
def _fused(x_BxLxD, w_DxV, targets_BxL, weights_BxL, chunk):
  return _forward(x_BxLxD, w_DxV, targets_BxL, weights_BxL, chunk, with_grad=False)


def _fused_fwd(x_BxLxD, w_DxV, targets_BxL, weights_BxL, chunk):
  loss, ce_BxL, hit_BxL, dx_BxLxD, dw_DxV = _forward(x_BxLxD, w_DxV, targets_BxL, weights_BxL,
                                                     chunk, with_grad=True)
  return (loss, ce_BxL, hit_BxL), (dx_BxLxD, dw_DxV.astype(w_DxV.dtype), ce_BxL, targets_BxL)


def _fused_bwd(chunk, residuals, cotangents):
  del chunk
  dx_BxLxD, dw_DxV, ce_BxL, targets_BxL = residuals
  g = cotangents[0]  # ce and hits are stop-gradient outputs: their cotangents are ignored
  return ((g * dx_BxLxD).astype(dx_BxLxD.dtype), (g * dw_DxV).astype(dw_DxV.dtype),
          np.zeros(targets_BxL.shape, jax.dtypes.float0), g * ce_BxL)


_fused.defvjp(_fused_fwd, _fused_bwd)
