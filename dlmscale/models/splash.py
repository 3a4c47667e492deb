"""Training attention on TPU: Pallas's splash (flash) attention kernel under shard_map.

The einsum path materialises fp32 [B, N, L, S] scores in HBM and XLA's TPU lowering keeps them for
the backward pass; splash attention streams over key blocks in VMEM with an online softmax, skips
the key blocks a causal mask hides, and saves only the output and the per-row logsumexp.

The kernel works on one sequence ([N, L, H] queries against [K, S, H] keys and values, N a multiple
of K: grouped heads), so it is vmapped over the batch. A Pallas kernel is a custom call that XLA's
SPMD partitioner cannot split, so inside `parallel.activation_sharding` (training) it runs under
shard_map: each chip attends its own rows (the 'batch' mesh axes) and its own heads (the 'heads'
axes, when both the query and the key heads divide over them; otherwise every chip computes all
heads). Keys at or past lengths_B[b] are masked with segment ids (the queries' id 0, padding's 1;
a row needs at least one key). Sequences that are not whole 128-row tiles are padded to them.
It takes no dropout; layers.attention_impl sends attention dropout to the einsum path.

Off a TPU the kernel runs in Pallas's interpreter: the same program, checked against the einsum
path on CPU in tests (slow: for tests only).
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
from jax.ad_checkpoint import checkpoint_name
from jax.sharding import PartitionSpec as P

from dlmscale import parallel
from dlmscale.models import chunked_attention

BLOCKS = (512, 256, 128)  # tile sizes tried, largest first: a TPU tile is a multiple of 128


def platform() -> str:
  """Where the attention will run: the training mesh's devices (compile mode traces on a CPU host
  for TPU devices), else the default backend."""
  context = parallel.activation_context()
  return context[0].devices.flat[0].platform if context is not None else jax.default_backend()


def fits(seq_len: int) -> bool:
  """Whether this length is whole 128-row tiles (others are padded to them: wasted work)."""
  return seq_len % BLOCKS[-1] == 0


def _block(n: int) -> int:
  return next(b for b in BLOCKS if n % b == 0)


def _kernel(l: int, s: int, heads: int, causal: bool, interpret: bool):
  """The kernel for one chip's heads. Built afresh per trace: its block tables are arrays, which
  a trace captures as its constants (one cached across traces broke a later call's arguments)."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  bq, bkv = _block(l), _block(s)
  blocks = sk.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                         block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
  mask = sm.CausalMask((l, s)) if causal else sm.FullMask((l, s))
  # Both the output and the logsumexp carry LSE_NAME: remat's 'minimal' policy keeps them.
  return sk.make_splash_mha(sm.MultiHeadMask([mask] * heads), block_sizes=blocks, head_shards=1,
                            q_seq_shards=1, interpret=interpret,
                            residual_checkpoint_name=chunked_attention.LSE_NAME)


def _pad_to_tiles(x_BxLx___):
  pad = -x_BxLx___.shape[1] % BLOCKS[-1]
  return jnp.pad(x_BxLx___, ((0, 0), (0, pad)) + ((0, 0),) * (x_BxLx___.ndim - 2))


def _local(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B, causal: bool, interpret: bool):
  """One chip's rows and heads through the kernel; [B, L, N, H] in v's dtype.

  Sequences are padded to whole 128-row tiles (the kernel's smallest key block): padded keys
  carry the padding's segment id, padded queries are dropped from the output."""
  l_in = q_BxLxNxH.shape[1]
  q_BxLxNxH, k_BxSxKxH, v_BxSxKxH = map(_pad_to_tiles, (q_BxLxNxH, k_BxSxKxH, v_BxSxKxH))
  l, n, h = q_BxLxNxH.shape[1:]
  s = k_BxSxKxH.shape[1]
  kernel = _kernel(l, s, n, causal, interpret)
  scale = 1.0 / math.sqrt(h)  # the kernel does not scale its dot products
  q_BxNxLxH = (q_BxLxNxH * jnp.asarray(scale, q_BxLxNxH.dtype)).transpose(0, 2, 1, 3)
  k_BxKxSxH, v_BxKxSxH = (a.transpose(0, 2, 1, 3) for a in (k_BxSxKxH, v_BxSxKxH))
  queries_L = jnp.zeros((l,), jnp.int32)

  def one(q_NxLxH, k_KxSxH, v_KxSxH, length):
    from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
    padding_S = (jnp.arange(s) >= length).astype(jnp.int32)
    return kernel(q_NxLxH, k_KxSxH, v_KxSxH, segment_ids=sk.SegmentIds(q=queries_L, kv=padding_S))

  out_BxNxLxH = jax.vmap(one)(q_BxNxLxH, k_BxKxSxH, v_BxKxSxH, lengths_B)
  return out_BxNxLxH.transpose(0, 2, 1, 3)[:, :l_in].astype(v_BxSxKxH.dtype)


def attention(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B=None, *, causal: bool):
  """Attention output [B, L, N, H] (fp32 softmax); keys at or past lengths_B[b] masked for row b."""
  b, s = q_BxLxNxH.shape[0], k_BxSxKxH.shape[1]
  n, kh = q_BxLxNxH.shape[2], k_BxSxKxH.shape[2]
  lengths_B = (jnp.full((b,), s, jnp.int32) if lengths_B is None
               else lengths_B.astype(jnp.int32))
  interpret = platform() != "tpu"
  context = parallel.activation_context()
  run = functools.partial(_local, causal=causal, interpret=interpret)
  if context is None:
    out = run(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B)
  else:
    mesh, rules = context
    batch = parallel.mesh_axes("batch", rules, mesh)
    heads = tuple(a for a in parallel.mesh_axes("heads", rules, mesh) if a not in batch)
    if b % math.prod(mesh.shape[a] for a in batch):
      batch = ()  # e.g. one row being sampled: every chip attends it
    if n % math.prod(mesh.shape[a] for a in heads) or kh % math.prod(mesh.shape[a] for a in heads):
      heads = ()  # grouped heads that do not split evenly: every chip computes all of them
    rows, per_head = batch or None, heads or None
    qkv = P(rows, None, per_head, None)
    out = jax.shard_map(run, mesh=mesh, in_specs=(qkv, qkv, qkv, P(rows)), out_specs=qkv,
                        check_vma=False)(q_BxLxNxH, k_BxSxKxH, v_BxSxKxH, lengths_B)
  return checkpoint_name(out, chunked_attention.OUTPUT_NAME)
