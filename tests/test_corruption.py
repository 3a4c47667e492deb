"""The corruption primitive every masked-diffusion estimator shares: exact answers on tiny cases."""
import jax
import jax.numpy as jnp
import numpy as np

from dlmscale import corruption

MASK = 9


def test_mask_tokens_replaces_exactly_the_masked_positions_and_weights_them():
  tokens = jnp.array([[1, 2, 3, 4], [5, 6, 7, 8]])
  masked = jnp.array([[True, False, True, False], [False, False, False, True]])
  c = corruption.mask_tokens(tokens, masked, MASK, jnp.array([2.0, 0.5]))
  np.testing.assert_array_equal(c.inputs_BxL, [[MASK, 2, MASK, 4], [5, 6, 7, MASK]])
  np.testing.assert_array_equal(c.masked_BxL, masked)
  np.testing.assert_array_equal(c.weights_BxL, [[2, 0, 2, 0], [0, 0, 0, 0.5]])
  assert c.weights_BxL.dtype == jnp.float32
  unweighted = corruption.mask_tokens(tokens, masked, MASK)
  np.testing.assert_array_equal(unweighted.weights_BxL, masked.astype(np.float32))


def test_rate_mask_masks_a_fraction_t_of_valid_positions_only():
  t_B = jnp.array([0.0, 0.25, 1.0])
  valid = jnp.arange(4000)[None] < jnp.array([4000, 4000, 1000])[:, None]
  masked = corruption.rate_mask(jax.random.key(0), t_B, (3, 4000), valid)
  frac = np.asarray(masked.sum(-1)) / np.array([4000, 4000, 1000])
  assert frac[0] == 0 and frac[2] == 1.0
  assert abs(frac[1] - 0.25) < 0.03  # 4000 Bernoulli(0.25) draws: sd 0.007
  assert not np.asarray(masked[2, 1000:]).any()


def test_force_one_masked_fills_only_empty_rows_within_their_valid_prefix():
  masked = jnp.array([[False] * 6, [True, False, False, False, False, False]])
  valid = jnp.arange(6)[None] < jnp.array([[3], [6]])
  out = np.asarray(corruption.force_one_masked(jax.random.key(1), masked, valid))
  assert out[0].sum() == 1 and out[0, :3].sum() == 1
  np.testing.assert_array_equal(out[1], np.asarray(masked[1]))


def test_stratified_times_cover_one_stratum_each():
  u_B = jnp.array([0.0, 0.999])
  times = np.stack([corruption.stratified_times(u_B, k, 4, 0.0) for k in range(4)])
  np.testing.assert_allclose(times[:, 0], [0, 0.25, 0.5, 0.75])
  assert (np.floor(times[:, 1] * 4) == np.arange(4)).all()
