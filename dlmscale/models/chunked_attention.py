"""Softmax attention one KV head at a time, with a flash-style backward pass (for CPUs).

The einsum path materialises fp32 [B, N, L, S] scores and probabilities for all heads at once and
then sweeps them through memory a dozen times (mask, max, exp, sum, divide, and as many again in
the backward pass); on a CPU those sweeps, not the matmuls, are most of attention's cost. Here a
lax.map over the K kv heads keeps each step's [B, G, L, S] tile small enough to stay in cache,
the forward pass saves only the output and the per-row logsumexp, and the backward pass
recomputes each head's probabilities from them (dS = P * (dP - rowsum(dO * O))), so nothing of
size L x S is stored between the passes. Same function as the einsum path (fp32 scores and
softmax, probabilities cast to the value dtype for P @ V). Dropout on the probabilities draws
each kv head's mask from the key folded with the head's index, and the backward pass draws it
again (so its masks differ from the einsum path's, with the same distribution).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from jax.ad_checkpoint import checkpoint_name

from dlmscale.models.dropout import keep_mask

OUTPUT_NAME, LSE_NAME = "attention_out", "attention_lse"  # jax.ad_checkpoint names
_MASKED = float(np.finfo(np.float32).min)  # as the einsum path: a row with no keys is uniform


def attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B=None, *, causal: bool,
              dropout_rate: float = 0.0, key=None):
  """Attention output [B, L, N, H]; keys at or past lengths_B[b] are masked for row b; dropout
  at `dropout_rate` on the probabilities when a key is given."""
  b, s = q_BxLxNxH.shape[0], k_BxSxKxH.shape[1]
  if lengths_B is None:
    lengths_B = jnp.full((b,), s, jnp.int32)
  drop = None
  if dropout_rate and key is not None:  # raw key bits: an integer input of the custom VJP
    drop = (dropout_rate, jax.random.key_impl(key))
    key = jax.random.key_data(key)
  else:
    key = None
  return _attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B.astype(jnp.int32), key, causal,
                    drop)


def _head_keep(key_data, drop, head, block: int, shape):
  """The keep mask of one kv head's probabilities in one query block, or None without dropout."""
  if key_data is None:
    return None
  rate, impl = drop
  key = jax.random.fold_in(jax.random.wrap_key_data(key_data, impl=impl), head)
  return keep_mask(jax.random.fold_in(key, block), rate, shape)


def _query_blocks(l: int, s: int, causal: bool):
  """(start, stop, keys) per query block: causal self-attention over 128+ positions runs in 4
  blocks, block i reading only the keys [0, keys) it can see (3/8 of the L x S work skipped);
  otherwise one block of every query and key."""
  if not (causal and l == s and l >= 128 and l % 4 == 0):
    return [(0, l, s)]
  size = l // 4
  return [(i * size, (i + 1) * size, (i + 1) * size) for i in range(4)]


def _query_major(x_BxLxNxH, kh: int):
  """[B, L, N, H] -> [K, B, G, L, H]: a kv head's G query heads together, one map step each."""
  b, l, n, h = x_BxLxNxH.shape
  return x_BxLxNxH.reshape(b, l, kh, n // kh, h).transpose(2, 0, 3, 1, 4)


def _query_back(x_KxBxGxLxH):
  """Inverse of _query_major."""
  kh, b, g, l, h = x_KxBxGxLxH.shape
  return x_KxBxGxLxH.transpose(1, 3, 0, 2, 4).reshape(b, l, kh * g, h)


def _scores(q_BxGxLxH, k_BxSxH, lengths_B, causal: bool, start: int = 0):
  """Scaled, masked fp32 scores [B, G, L, S] of one kv head; the queries sit at positions
  start, start + 1, ... (for the causal mask)."""
  l, s, h = q_BxGxLxH.shape[2], k_BxSxH.shape[1], q_BxGxLxH.shape[3]
  scores = jnp.einsum("bglh,bsh->bgls", q_BxGxLxH, k_BxSxH,
                      preferred_element_type=jnp.float32) / math.sqrt(h)
  allowed_BxLxS = jnp.arange(s)[None, None, :] < lengths_B[:, None, None]
  if causal:
    allowed_BxLxS = allowed_BxLxS & jnp.tril(jnp.ones((l, s), bool), k=start)[None]
  return jnp.where(allowed_BxLxS[:, None], scores, _MASKED)


def _forward(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, key_data, causal, drop):
  kh = k_BxSxKxH.shape[2]
  q_KxBxGxLxH = _query_major(q_BxLxNxH, kh)
  k_KxBxSxH, v_KxBxSxH = k_BxSxKxH.transpose(2, 0, 1, 3), v_BxSxKxH.transpose(2, 0, 1, 3)

  blocks = _query_blocks(q_BxLxNxH.shape[1], k_BxSxKxH.shape[1], causal)

  def head(args):
    q, k, v, index = args
    outs, lses = [], []
    for block, (start, stop, keys) in enumerate(blocks):
      scores = _scores(q[:, :, start:stop], k[:, :keys], lengths_B, causal, start)
      max_BxGxL = scores.max(-1)
      exp = jnp.exp(scores - max_BxGxL[..., None])
      sum_BxGxL = exp.sum(-1)
      probs = exp / sum_BxGxL[..., None]
      keep = _head_keep(key_data, drop, index, block, probs.shape)
      if keep is not None:
        probs = jnp.where(keep, probs / (1.0 - drop[0]), 0.0)
      out_BxGxLxH = jnp.einsum("bgls,bsh->bglh", probs.astype(v.dtype), v[:, :keys],
                               preferred_element_type=jnp.float32)
      outs.append(out_BxGxLxH.astype(v.dtype))
      lses.append(max_BxGxL + jnp.log(sum_BxGxL))
    return jnp.concatenate(outs, axis=2), jnp.concatenate(lses, axis=2)

  out_KxBxGxLxH, lse_KxBxGxL = jax.lax.map(
      head, (q_KxBxGxLxH, k_KxBxSxH, v_KxBxSxH, jnp.arange(kh)))
  return _query_back(out_KxBxGxLxH), lse_KxBxGxL


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def _attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, key_data, causal, drop):
  return _forward(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, key_data, causal, drop)[0]


def _attention_fwd(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, key_data, causal, drop):
  out_BxLxNxH, lse_KxBxGxL = _forward(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, key_data,
                                      causal, drop)
  # Named so that a remat policy can keep them (transformer.REMAT_POLICIES['minimal']) instead of
  # saving the L x S scores they come from, or recomputing the whole forward pass.
  out_BxLxNxH = checkpoint_name(out_BxLxNxH, OUTPUT_NAME)
  lse_KxBxGxL = checkpoint_name(lse_KxBxGxL, LSE_NAME)
  return out_BxLxNxH, (q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, key_data, out_BxLxNxH,
                       lse_KxBxGxL)


def _attention_bwd(causal, drop, residuals, dout_BxLxNxH):
  q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, key_data, out_BxLxNxH, lse_KxBxGxL = residuals
  kh = k_BxSxKxH.shape[2]
  q_KxBxGxLxH, dout_KxBxGxLxH, out_KxBxGxLxH = (
      _query_major(x, kh) for x in (q_BxLxNxH, dout_BxLxNxH, out_BxLxNxH))
  k_KxBxSxH, v_KxBxSxH = k_BxSxKxH.transpose(2, 0, 1, 3), v_BxSxKxH.transpose(2, 0, 1, 3)
  scale = 1.0 / math.sqrt(q_BxLxNxH.shape[3])

  blocks = _query_blocks(q_BxLxNxH.shape[1], k_BxSxKxH.shape[1], causal)

  def head(args):
    q, k, v, lse, dout, out, index = args
    k32, v32 = k.astype(jnp.float32), v.astype(jnp.float32)
    dqs, dk_BxSxH, dv_BxSxH = [], jnp.zeros(k32.shape), jnp.zeros(v32.shape)
    for block, (start, stop, keys) in enumerate(blocks):
      rows = slice(start, stop)
      probs = jnp.exp(_scores(q[:, :, rows], k[:, :keys], lengths_B, causal, start)
                      - lse[:, :, rows, None])
      dout32 = dout[:, :, rows].astype(jnp.float32)
      # With dropout Z: out = (Z * P) V, so dV uses the dropped probabilities, dP is
      # Z * dO V^T, and rowsum(P * dP) is still rowsum(dO * out).
      keep = _head_keep(key_data, drop, index, block, probs.shape)
      scaled = lambda a, keep=keep: (a if keep is None
                                     else jnp.where(keep, a / (1.0 - drop[0]), 0.0))
      dv_BxSxH = dv_BxSxH.at[:, :keys].add(jnp.einsum("bgls,bglh->bsh", scaled(probs), dout32))
      dprobs = scaled(jnp.einsum("bglh,bsh->bgls", dout32, v32[:, :keys]))
      rowsum_BxGxL = jnp.sum(dout32 * out[:, :, rows].astype(jnp.float32), axis=-1)
      dscores = probs * (dprobs - rowsum_BxGxL[..., None]) * scale
      dqs.append(jnp.einsum("bgls,bsh->bglh", dscores, k32[:, :keys]))
      dk_BxSxH = dk_BxSxH.at[:, :keys].add(
          jnp.einsum("bgls,bglh->bsh", dscores, q[:, :, rows].astype(jnp.float32)))
    return jnp.concatenate(dqs, axis=2), dk_BxSxH, dv_BxSxH

  dq, dk, dv = jax.lax.map(head, (q_KxBxGxLxH, k_KxBxSxH, v_KxBxSxH, lse_KxBxGxL,
                                  dout_KxBxGxLxH, out_KxBxGxLxH, jnp.arange(kh)))
  dq_BxLxNxH = _query_back(dq).astype(q_BxLxNxH.dtype)
  dk_BxSxKxH = dk.transpose(1, 2, 0, 3).astype(k_BxSxKxH.dtype)
  dv_BxSxKxH = dv.transpose(1, 2, 0, 3).astype(v_BxSxKxH.dtype)
  no_grad = lambda a: None if a is None else np.zeros(a.shape, jax.dtypes.float0)
  return dq_BxLxNxH, dk_BxSxKxH, dv_BxSxKxH, no_grad(lengths_B), no_grad(key_data)


_attention.defvjp(_attention_fwd, _attention_bwd)
