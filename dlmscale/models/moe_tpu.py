"""Dropless MoE dispatch built for TPU: per-chip grouped matmuls under shard_map.

moe.py's "dropless" runs `jax.lax.ragged_dot` over the global batch, and XLA's TPU lowering of
ragged_dot computes every expert for every token (BENCHMARKS.md "TPU compile"). Here each chip
sorts its own tokens' (token, expert) assignments by expert and runs the experts as a grouped
matmul: Pallas's megablox `gmm` on TPU (its grid visits only the row tiles that hold assignments),
`jax.lax.ragged_dot` elsewhere. Two ways for the assignments to meet their experts, both dropless:

- "dropless_a2a": experts stay on their chips. Each chip sends its assignments to their experts'
  chips with an all-to-all over the expert axis, and the results come back the same way. Shapes
  are static, so a chip's receive buffer holds the worst case: every assignment its expert group
  could route to it (expert-axis size x local assignments rows when E / n_expert >= k). The kernel
  skips the empty rows at run time; XLA's cost analysis still counts them.
- "dropless_gather": the layer's expert weights are all-gathered over the expert axis (and their
  gradients reduce-scattered), and each chip runs exactly its own T*k/chips assignments; no token
  moves. Static work equals the real work, whatever the routing.

Both compute moe.py's dropless function (up to float rounding); with dropout the masks differ
(drawn per chip). Inside `parallel.activation_sharding` (training, sampling) they run under
shard_map on that mesh; outside it, as one chip.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from dlmscale import parallel
from dlmscale.errors import ConfigError
from dlmscale.models.layers import dropout

TPU_DISPATCHES = ("dropless_a2a", "dropless_gather")
KERNELS = ("ragged_dot", "megablox", "megablox_interpret")
# megablox tiles: at most this many rows, and this many (a multiple of 128) contraction and
# output columns. One size serves both: the backward pass reuses the tiling with the weights
# transposed, and a TPU block's last dimension must be a multiple of 128 (the kernel masks the
# ragged last tile).
TILE_ROWS, TILE_COLS = 512, 512

_KERNEL = contextvars.ContextVar("dlmscale_moe_kernel", default=None)


@contextlib.contextmanager
def use_kernel(kernel: str):
  """Forces the grouped-matmul kernel while tracing (e.g. megablox in interpret mode on CPU)."""
  if kernel not in KERNELS:
    raise ConfigError(f"unknown grouped-matmul kernel {kernel!r}: use one of {list(KERNELS)}")
  token = _KERNEL.set(kernel)
  try:
    yield
  finally:
    _KERNEL.reset(token)


def _default_kernel(mesh) -> str:
  # Compile mode traces on a CPU host for TPU devices: the mesh's devices decide, not the backend.
  platform = mesh.devices.flat[0].platform if mesh is not None else jax.default_backend()
  return "megablox" if platform == "tpu" else "ragged_dot"


def _tiling(m: int, k: int, n: int) -> tuple[int, int, int]:
  tm = min(TILE_ROWS, -(-m // 8) * 8)  # whole sublanes of 8 rows
  tc = 128 * max(1, min(k, n, TILE_COLS) // 128)
  return tm, tc, tc


def grouped_matmul(x_MxK, w_GxKxN, sizes_G, kernel: str):
  """Rows [off_g, off_g + sizes_G[g]) of x times w[g] (off: exclusive cumsum of sizes_G); rows
  past sum(sizes_G) give zeros and pass no gradient."""
  m = x_MxK.shape[0]
  valid_Mx1 = (jnp.arange(m) < sizes_G.sum())[:, None]
  # megablox leaves rows past the groups unwritten (garbage on TPU, NaN when interpreted), in its
  # output and in its input gradient: masking both sides keeps them out of values and gradients.
  x_MxK = jnp.where(valid_Mx1, x_MxK, 0)
  if kernel == "ragged_dot":
    y_MxN = jax.lax.ragged_dot(x_MxK, w_GxKxN, sizes_G)
  else:
    from jax.experimental.pallas.ops.tpu.megablox import ops as megablox
    tiling = _tiling(m, *w_GxKxN.shape[1:])
    x_pad = jnp.pad(x_MxK, ((0, -m % tiling[0]), (0, 0)))  # megablox needs whole row tiles
    y_MxN = megablox.gmm(x_pad, w_GxKxN, sizes_G, x_MxK.dtype, tiling, None, None, False,
                         kernel == "megablox_interpret")[:m]
  return jnp.where(valid_Mx1, y_MxN, 0)


def expert_ffn(x_MxD, sizes_G, w_gate_GxDxF, w_up_GxDxF, w_down_GxFxD, kernel, dropout_rate,
               key):
  """SwiGLU experts over expert-sorted rows (group g: rows of expert g)."""
  gate_MxF = grouped_matmul(x_MxD, w_gate_GxDxF, sizes_G, kernel)
  up_MxF = grouped_matmul(x_MxD, w_up_GxDxF, sizes_G, kernel)
  h_MxF = dropout(jax.nn.silu(gate_MxF) * up_MxF, dropout_rate, key)
  return grouped_matmul(h_MxF, w_down_GxFxD, sizes_G, kernel)


def _inverse(perm_N):
  return jnp.zeros_like(perm_N).at[perm_N].set(jnp.arange(perm_N.shape[0], dtype=perm_N.dtype))


def _exclusive_cumsum(a, axis=-1):
  return jnp.cumsum(a, axis=axis) - a


def _combine(y_sorted_NxD, order_N, weights_TxK):
  """Back to token-major order, weighted sum over each token's k experts."""
  t, k = weights_TxK.shape
  y_TxKxD = jnp.take(y_sorted_NxD, _inverse(order_N), axis=0).reshape(t, k, -1)
  return jnp.einsum("tkd,tk->td", y_TxKxD, weights_TxK.astype(y_TxKxD.dtype))


def _sort(x_TxD, experts_TxK, num_experts):
  """(x_NxD rows sorted by expert, order_N, sizes_E); N = T * k assignments, token-major."""
  k = experts_TxK.shape[1]
  experts_N = experts_TxK.reshape(-1)
  order_N = jnp.argsort(experts_N, stable=True)
  sizes_E = jnp.bincount(experts_N, length=num_experts).astype(jnp.int32)
  return jnp.take(x_TxD, order_N // k, axis=0), order_N, sizes_E


def local_dropless(x_TxD, weights_TxK, experts_TxK, w_gate, w_up, w_down, kernel, dropout_rate,
                   key):
  """Every assignment of these tokens through all E experts (weights [E, ...]) on one chip."""
  x_NxD, order_N, sizes_E = _sort(x_TxD, experts_TxK, w_gate.shape[0])
  y_NxD = expert_ffn(x_NxD, sizes_E, w_gate, w_up, w_down, kernel, dropout_rate, key)
  return _combine(y_NxD, order_N, weights_TxK)


def _group_of(row_R, ends_G):
  """Index of the group holding each row, groups laid out back to back with inclusive ends."""
  return jnp.searchsorted(ends_G, row_R, side="right").astype(jnp.int32)


def a2a_dropless(x_TxD, weights_TxK, experts_TxK, w_gate, w_up, w_down, kernel, dropout_rate,
                 key, *, expert_axes, num_experts):
  """Inside shard_map: this chip's tokens; its E/n local experts (weights [E/n, ...])."""
  n = jax.lax.psum(1, expert_axes)
  t, k = experts_TxK.shape
  e_loc = num_experts // n
  x_NxD, order_N, sizes_E = _sort(x_TxD, experts_TxK, num_experts)
  n_rows = x_NxD.shape[0]
  # A token sends at most min(k, E/n) assignments to one chip (its k experts are distinct).
  chunk = t * min(k, e_loc)

  # Send: chunk p holds the sorted rows of chip p's experts (contiguous), zero-padded.
  sizes_PxE = sizes_E.reshape(n, e_loc)
  send_P = sizes_PxE.sum(1)
  start_P = _exclusive_cumsum(send_P)
  row_C = jnp.arange(chunk, dtype=jnp.int32)
  src_PxC = jnp.minimum(start_P[:, None] + row_C[None], n_rows - 1)
  ok_PxC = row_C[None] < send_P[:, None]
  send_PxCxD = jnp.where(ok_PxC[..., None], jnp.take(x_NxD, src_PxC, axis=0), 0)
  recv_SxCxD = jax.lax.all_to_all(send_PxCxD, expert_axes, 0, 0)
  count_SxE = jax.lax.all_to_all(sizes_PxE, expert_axes, 0, 0)  # from sender s, local expert e

  # Regroup the received rows by local expert (then sender) for the grouped matmul.
  m = n * chunk
  src_off_SxE = _exclusive_cumsum(count_SxE, axis=1)  # within sender s's chunk
  count_ES = count_SxE.T.reshape(-1)
  dst_end_ES = jnp.cumsum(count_ES)
  dst_off_ExS = (dst_end_ES - count_ES).reshape(e_loc, n)
  row_M = jnp.arange(m, dtype=jnp.int32)
  g_M = jnp.minimum(_group_of(row_M, dst_end_ES), e_loc * n - 1)
  e_M, s_M = g_M // n, g_M % n
  src_M = s_M * chunk + src_off_SxE[s_M, e_M] + row_M - dst_off_ExS[e_M, s_M]
  xr_MxD = jnp.take(recv_SxCxD.reshape(m, -1), jnp.clip(src_M, 0, m - 1), axis=0)
  yr_MxD = expert_ffn(xr_MxD, count_SxE.sum(0), w_gate, w_up, w_down, kernel, dropout_rate, key)

  # Back to each sender's chunk layout, back over the expert axis, back to this chip's order.
  e_SxC = jnp.minimum(jax.vmap(lambda c: _group_of(row_C, jnp.cumsum(c)))(count_SxE), e_loc - 1)
  s_SxC = jnp.broadcast_to(jnp.arange(n, dtype=jnp.int32)[:, None], (n, chunk))
  dst_SxC = dst_off_ExS[e_SxC, s_SxC] + row_C[None] - src_off_SxE[s_SxC, e_SxC]
  ok_SxC = row_C[None] < count_SxE.sum(1)[:, None]
  back_SxCxD = jnp.where(ok_SxC[..., None],
                         jnp.take(yr_MxD, jnp.clip(dst_SxC, 0, m - 1), axis=0), 0)
  ret_PxCxD = jax.lax.all_to_all(back_SxCxD, expert_axes, 0, 0)
  row_N = jnp.arange(n_rows, dtype=jnp.int32)
  p_N = jnp.minimum(_group_of(row_N, jnp.cumsum(send_P)), n - 1)
  y_NxD = jnp.take(ret_PxCxD.reshape(m, -1), p_N * chunk + row_N - start_P[p_N], axis=0)
  return _combine(y_NxD, order_N, weights_TxK)


def dispatch(dispatch_name: str, x_TxD, weights_TxK, experts_TxK, w_gate, w_up, w_down, *,
             dropout_rate=0.0, key=None):
  """y_TxD of the routed experts by `dispatch_name` (one of TPU_DISPATCHES)."""
  context = parallel.activation_context()  # the mesh and rules the train step traces under
  mesh, rules = context if context is not None else (None, None)
  kernel = _KERNEL.get() or _default_kernel(mesh)
  dt = x_TxD.dtype
  ws = tuple(w.astype(dt) for w in (w_gate, w_up, w_down))
  num_experts = w_gate.shape[0]
  if mesh is None:
    return local_dropless(x_TxD, weights_TxK, experts_TxK, *ws, kernel, dropout_rate, key)

  batch = parallel.mesh_axes("batch", rules, mesh)
  experts = parallel.mesh_axes("expert", rules, mesh)
  tensor = parallel.mesh_axes("mlp", rules, mesh)
  if x_TxD.shape[0] % math.prod(mesh.shape[a] for a in batch):
    # e.g. sampling one short row: too few tokens to split over the chips; run unsharded.
    return local_dropless(x_TxD, weights_TxK, experts_TxK, *ws, kernel, dropout_rate, key)
  if dispatch_name == "dropless_a2a" and not set(experts) <= set(batch):
    raise ConfigError(f"moe_dispatch='dropless_a2a' needs the tokens split over the expert mesh "
                      f"axes {experts}, but the 'batch' rule uses {batch}: add them to the rule "
                      f"or use moe_dispatch='dropless_gather'")
  if dispatch_name == "dropless_a2a":
    w_specs = (P(experts or None, None, tensor or None),) * 2 + (
        P(experts or None, tensor or None, None),)
  else:
    w_specs = (P(None, None, tensor or None),) * 2 + (P(None, tensor or None, None),)
  tok = P(batch or None, None)
  has_key = key is not None
  key_data = jax.random.key_data(key) if has_key else jnp.zeros((), jnp.uint32)

  def body(x, wts, exps, wg, wu, wd, kd):
    k = None
    if has_key:  # a different dropout mask on every chip (other tokens or other mlp columns)
      k = jax.random.wrap_key_data(kd)
      for axis in batch + tensor:
        k = jax.random.fold_in(k, jax.lax.axis_index(axis))
    if dispatch_name == "dropless_a2a" and experts:
      y = a2a_dropless(x, wts, exps, wg, wu, wd, kernel, dropout_rate, k, expert_axes=experts,
                       num_experts=num_experts)
    else:
      y = local_dropless(x, wts, exps, wg, wu, wd, kernel, dropout_rate, k)
    # The `mlp` dimension split over tensor: each chip holds a partial sum of the down matmul.
    return jax.lax.psum(y, tensor) if tensor else y

  key_spec = P(*(None,) * key_data.ndim)
  run = jax.shard_map(body, mesh=mesh, in_specs=(tok, tok, tok, *w_specs, key_spec),
                      out_specs=tok, check_vma=False)
  return run(x_TxD, weights_TxK, experts_TxK, *ws, key_data)
