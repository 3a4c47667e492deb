"""Throughput paths compute what they replace: the CPU blocked grouped matmul equals ragged_dot
(values and gradients, empty and uneven groups, any block size) without ragged_dot's all-groups
temporary; dropout's 16-bit draws keep each element independently with probability 1 - rate."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmscale.models.grouped_matmul import block_rows, blocked_matmul, grouped_matmul
from dlmscale.models.layers import dropout

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
jit = functools.partial(jax.jit, compiler_options=FAST)


def _case(sizes, k=6, n=5, seed=0):
  rng = np.random.default_rng(seed)
  m = int(sum(sizes))
  x = jnp.asarray(rng.standard_normal((m, k)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((len(sizes), k, n)), jnp.float32)
  return x, w, jnp.asarray(sizes, jnp.int32)


@pytest.mark.parametrize("sizes,block", [((3, 0, 7, 2), 4), ((12, 0, 0, 0), 5), ((0, 1, 0, 1), 1),
                                         ((5, 6, 1, 0), 64), ((4, 4, 4, 4), 0)])
def test_blocked_equals_ragged_dot_with_gradients(sizes, block):
  x, w, s = _case(sizes)
  probe = jnp.asarray(np.random.default_rng(1).standard_normal((x.shape[0], w.shape[2])),
                      jnp.float32)

  def run(fn):
    f = lambda x, w: jnp.sum(fn(x, w, s) * probe)
    return jit(lambda x, w: (fn(x, w, s), jax.grad(f, argnums=(0, 1))(x, w)))(x, w)

  want, (want_dx, want_dw) = run(jax.lax.ragged_dot)
  got, (dx, dw) = run(functools.partial(blocked_matmul, block=block))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(dw, want_dw, rtol=1e-5, atol=1e-5)
  # And the platform switch lowers to it here (CPU).
  np.testing.assert_allclose(jit(grouped_matmul)(x, w, s), want, rtol=1e-5, atol=1e-5)


def _flops(fn, *args) -> float:
  return jax.jit(fn).lower(*args).compile().cost_analysis()["flops"]


def test_blocked_cost_does_not_grow_with_groups():
  # 64 groups of 8 rows: ragged_dot on CPU multiplies every row by all 64 matrices.
  x, w, s = _case([8] * 64, k=16, n=16)
  dense = 2 * 64 * 512 * 16 * 16
  assert _flops(lambda x, w: jax.lax.ragged_dot(x, w, s), x, w) >= dense
  # Blocks: 512 rows + at most 64 * (block - 1) padding rows, each times one matrix.
  assert _flops(lambda x, w: blocked_matmul(x, w, s, block=8), x, w) < dense / 16
  assert block_rows(8192, 8) == 256 and block_rows(100, 64) == 32


def test_dropout_keeps_pairs_independently_at_the_rate():
  x = jnp.ones((400, 1000), jnp.float32)
  y = np.asarray(dropout(x, 0.3, jax.random.key(0)))
  kept = y != 0
  assert abs(kept.mean() - 0.7) < 0.003
  np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
  # The two elements drawn from one 32-bit word are independent (0.49 if so, 0.7 if shared).
  both = (kept[:, 0::2] & kept[:, 1::2]).mean()
  assert abs(both - 0.49) < 0.005
  # Different rows and keys differ; an odd last axis takes the per-element path.
  assert (kept[0] != kept[1]).any()
  assert not np.array_equal(kept, np.asarray(dropout(x, 0.3, jax.random.key(1))) != 0)
  odd = np.asarray(dropout(jnp.ones((1001,)), 0.5, jax.random.key(0))) != 0
  assert abs(odd.mean() - 0.5) < 0.06
