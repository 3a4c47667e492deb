"""Checksums of a state's arrays: any changed word changes them, and the mesh does not."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlmscale.checksums import first_mismatches, state_checksums


def _tree(seed=0):
  rng = np.random.default_rng(seed)
  return {"w": jnp.asarray(rng.standard_normal((16, 8)), jnp.float32),
          "b": jnp.asarray(rng.standard_normal(8), jnp.bfloat16),
          "count": jnp.asarray(7, jnp.int32),
          "key": jax.random.key_data(jax.random.key(3)),
          "mask": jnp.asarray(rng.random(5) > 0.5)}


def test_every_single_element_change_is_seen():
  tree = _tree()
  base = state_checksums(tree)
  assert sorted(base) == ["b", "count", "key", "mask", "w"]
  w = np.asarray(tree["w"])
  for i in range(w.size):  # one bit of every element, in turn
    bits = w.view(np.uint32).copy().reshape(-1)
    bits[i] ^= 1 << (i % 32)
    changed = dict(tree, w=jnp.asarray(bits.view(np.float32).reshape(w.shape)))
    assert first_mismatches(base, state_checksums(changed)) == ["w"], i


def test_swapped_elements_and_other_dtypes_are_seen():
  tree = _tree()
  base = state_checksums(tree)
  w = np.asarray(tree["w"]).copy()
  w[[0, 1]] = w[[1, 0]]
  assert first_mismatches(base, state_checksums(dict(tree, w=jnp.asarray(w)))) == ["w"]
  b = np.asarray(tree["b"]).copy()
  b[3] = -b[3]
  assert first_mismatches(base, state_checksums(dict(tree, b=jnp.asarray(b)))) == ["b"]
  assert first_mismatches(base, state_checksums(dict(tree, count=jnp.asarray(8, jnp.int32)))) == [
      "count"]
  assert first_mismatches(base, state_checksums(dict(tree, mask=~tree["mask"]))) == ["mask"]


def test_missing_arrays_are_named_and_long_lists_counted():
  base = {f"a{i}": "00000000-00000000" for i in range(6)}
  got = {k: "00000000-00000001" for k in base}
  assert first_mismatches(base, got) == ["a0", "a1", "a2", "3 more arrays"]
  assert first_mismatches(base, {}) == ["a0", "a1", "a2", "3 more arrays"]


@pytest.mark.parametrize("num_devices,spec", [(8, P("x", None)), (4, P(None, "x")), (1, P())])
def test_the_same_on_any_mesh(num_devices, spec):
  """A checkpoint saved on 8 devices must verify when restored on 4 (elastic resume)."""
  tree = _tree()
  mesh = Mesh(np.array(jax.devices()[:num_devices]), ("x",))
  sharded = dict(tree, w=jax.device_put(tree["w"], NamedSharding(mesh, spec)))
  assert state_checksums(sharded) == state_checksums(tree)
