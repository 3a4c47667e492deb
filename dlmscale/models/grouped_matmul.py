"""Grouped matmul of expert-sorted rows: rows [start_g, start_g + sizes_g) times w[g].

`jax.lax.ragged_dot` is native on TPU and GPU, but on CPU XLA lowers it to a dense product of
every row with every group's matrix (G times the FLOPs and a [G, M, K] temporary). `blocked_matmul`
computes the same thing on CPU with G-independent cost: each group's rows are padded to whole
blocks of `block` rows, every block is multiplied by its own group's matrix (a batched matmul),
and the rows are gathered back. Padding adds at most G * (block - 1) rows.
`grouped_matmul` picks per target platform at lowering time (so an AOT compile for TPU on a CPU
host still lowers ragged_dot).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp



def block_rows(m: int, g: int) -> int:
  """Rows per block: about m / (4 g) (padding then adds ~1/8 of the rows on average and the
  gathered weights are ~5 g blocks), a power of two in [32, 512]."""
  b = 32
  while b * 2 <= min(512, m // (4 * max(g, 1))):
    b *= 2
  return b


# "blocked", or "ragged_dot" to trace XLA's own CPU lowering (benchmarks compare the two).
CPU_IMPL = "blocked"


def grouped_matmul(x_MxK, w_GxKxN, sizes_G):
  """ragged_dot(x, w, sizes) with a CPU lowering whose cost does not grow with G."""
  ragged = lambda x, w, s: jax.lax.ragged_dot(x, w, s)
  return jax.lax.platform_dependent(
      x_MxK, w_GxKxN, sizes_G, cpu=blocked_matmul if CPU_IMPL == "blocked" else ragged,
      default=ragged)


def blocked_matmul(x_MxK, w_GxKxN, sizes_G, block: int = 0):
  """ragged_dot's result through whole blocks of one group each (sizes_G must sum to M; 0:
  block_rows)."""
  m, _ = x_MxK.shape
  g = w_GxKxN.shape[0]
  block = max(1, min(block or block_rows(m, g), m))
  num_blocks = -(-m // block) + g  # each group wastes less than one block
  sizes_G = sizes_G.astype(jnp.int32)
  starts_G = jnp.cumsum(sizes_G) - sizes_G
  padded_G = -(-sizes_G // block) * block
  padded_starts_G = jnp.cumsum(padded_G) - padded_G
  # Row r of group e lands at padded slot padded_start_e + (r - start_e).
  group_M = jnp.searchsorted(jnp.cumsum(sizes_G), jnp.arange(m), side="right")
  slot_M = padded_starts_G[group_M] + jnp.arange(m) - starts_G[group_M]
  x_PxK = jnp.zeros((num_blocks * block, x_MxK.shape[1]), x_MxK.dtype).at[slot_M].set(
      x_MxK, unique_indices=True, indices_are_sorted=True)
  # Block j belongs to the group whose padded range holds its first slot (trailing blocks past
  # every group are all padding; they take the last group and multiply zeros).
  block_J = jnp.searchsorted(jnp.cumsum(padded_G), jnp.arange(num_blocks) * block, side="right")
  w_JxKxN = jnp.take(w_GxKxN, jnp.minimum(block_J, g - 1), axis=0)
  y_JxBxN = jnp.einsum("jbk,jkn->jbn", x_PxK.reshape(num_blocks, block, -1), w_JxKxN)
  return y_JxBxN.reshape(num_blocks * block, -1)[slot_M]
