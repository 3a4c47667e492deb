"""Likelihood estimators on token arrays: AR exactness and the DLM bound against enumeration."""
import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlmscale
from dlmscale.errors import ConfigError
from dlmscale.evaluation import likelihood
from tests._shared import random_params

V, MASK = 5, 4  # tokens 0..3, mask id 4
_JITTED = {}  # jitted functions shared by the tests (compiling dominates their time)
# Two requests, continuation length 3 each, right-padded to 8: [context | continuation | pad].
TOKENS = np.array([[1, 2, 0, 3, 1, 0, 0, 0],
                   [2, 2, 1, 3, 0, 0, 0, 0]], np.int32)
CONT_START, LENGTHS = np.array([2, 1]), np.array([5, 4])
IDS = np.array([11, 12], np.uint32)


@pytest.fixture(scope="module")
def model_and_params():
  model = dlmscale.build_model(dlmscale.ModelConfig(
      vocab_size=V, num_layers=2, d_model=16, num_heads=2, d_ff=32, dtype="float32",
      tie_embeddings=False))
  return model, random_params(model, seed=1, std=0.5)


def _logits(model, params, row, causal: bool):
  """Reference forward pass of one unpadded row: logits [L, V] (jitted: eager flax is slow)."""
  key = ("forward", id(model), causal)
  if key not in _JITTED:
    _JITTED[key] = jax.jit(lambda p, x: model.apply(p, x[None], causal=causal)[0][0])
  return _JITTED[key](params, jnp.asarray(row, jnp.int32))


def _bidirectional_logp(model, params, row, masked_positions, cfg_scale=0.0, cont_start=None):
  """Reference: log p(row[i]) at every position of one unpadded row with some positions masked."""
  x = np.array(row)
  x[list(masked_positions)] = MASK
  logits = _logits(model, params, x, causal=False)
  if cfg_scale:
    u = x.copy()
    u[:cont_start] = MASK
    logits = (1 + cfg_scale) * logits - cfg_scale * _logits(model, params, u, causal=False)
  return np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)), np.array(row)[:, None], 1)[:, 0]


def _exact_bound(model, params, b):
  """sum over non-empty masks m of sum_{i in m} log p(x_i | x_unmasked) / (|m| C(L, |m|)): the
  expectation of both the 'iid' (integral over t) and 'fixed_count' (average over l) bounds."""
  row, c, n = TOKENS[b, :LENGTHS[b]], CONT_START[b], LENGTHS[b]
  total, L = 0.0, n - c
  for size in range(1, L + 1):
    for subset in itertools.combinations(range(c, n), size):
      logp = _bidirectional_logp(model, params, row, subset)
      total += logp[list(subset)].sum() / (size * math.comb(L, size))
  return total


def _chain_reference(model, params, b, cfg_scale=0.0):
  row, c, n = TOKENS[b, :LENGTHS[b]], CONT_START[b], LENGTHS[b]
  return sum(_bidirectional_logp(model, params, row, range(i, n), cfg_scale, c)[i]
             for i in range(c, n))


def _score(model, params, estimator, num_samples=1, samples_per_pass=1, tokens=TOKENS,
           cont_start=CONT_START, lengths=LENGTHS, ids=IDS, cfg_scale=0.0, seed=0):
  key = (id(model), estimator, num_samples, samples_per_pass, cfg_scale)
  if key not in _JITTED:  # one compilation per estimator setting (the seed is an argument)
    _JITTED[key] = jax.jit(lambda p, t, c, l, i, rng: likelihood.dlm_loglikelihood(
        model, p, t, c, l, i, rng, estimator=estimator, num_samples=num_samples,
        samples_per_pass=samples_per_pass, max_cont_len=4, mask_id=MASK, cfg_scale=cfg_scale))
  out = _JITTED[key](params, jnp.asarray(tokens), jnp.asarray(cont_start), jnp.asarray(lengths),
                     jnp.asarray(ids), jax.random.key(seed))
  return {k: np.asarray(v) for k, v in out.items()}


@pytest.mark.parametrize("estimator", ["iid", "fixed_count"])
def test_stochastic_estimators_converge_to_the_enumerated_bound(model_and_params, estimator):
  model, params = model_and_params
  out = _score(model, params, estimator, num_samples=4096, samples_per_pass=1024)
  exact = np.array([_exact_bound(model, params, b) for b in range(2)])
  assert np.all(out["stderr_B"] > 0) and np.all(out["stderr_B"] < 0.2)
  # 'iid' clips t at 1e-3, a bias far below the tolerance.
  assert np.all(np.abs(out["mean_B"] - exact) < 4 * out["stderr_B"]), (out["mean_B"], exact)


def test_chain_equals_its_definition(model_and_params):
  model, params = model_and_params
  out = _score(model, params, "chain")
  expected = [_chain_reference(model, params, b) for b in range(2)]
  np.testing.assert_allclose(out["mean_B"], expected, rtol=1e-5)
  assert np.all(out["stderr_B"] == 0)


def test_guidance_weight_zero_is_no_guidance_and_positive_follows_the_formula(model_and_params):
  model, params = model_and_params
  plain = _score(model, params, "chain")["mean_B"]
  np.testing.assert_array_equal(_score(model, params, "chain", cfg_scale=0.0)["mean_B"], plain)
  guided = _score(model, params, "chain", cfg_scale=0.7)["mean_B"]
  expected = [_chain_reference(model, params, b, cfg_scale=0.7) for b in range(2)]
  np.testing.assert_allclose(guided, expected, rtol=1e-5)
  assert not np.allclose(guided, plain)


@pytest.mark.parametrize("estimator", ["iid", "fixed_count", "chain"])
def test_single_token_continuation_is_exact_with_one_pass(model_and_params, estimator):
  model, params = model_and_params
  lengths = CONT_START + 1
  out = _score(model, params, estimator, num_samples=1 if estimator == "chain" else 4,
               lengths=lengths)
  expected = [_bidirectional_logp(model, params, TOKENS[b, :lengths[b]], [CONT_START[b]])
              [CONT_START[b]] for b in range(2)]
  np.testing.assert_allclose(out["mean_B"], expected, rtol=1e-5)
  assert np.all(out["stderr_B"] == 0)


def test_fixed_count_strata_are_exact_when_the_length_divides_the_samples():
  cont_BxL = likelihood.continuation_mask(jnp.asarray(CONT_START), jnp.asarray(LENGTHS), 8)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(2))
  masked, scored, weight = jax.jit(lambda k, d, c, s: likelihood.sample_masks(
      "fixed_count", k, d, c, s, num_samples=12, eps=1e-3))(
          keys, jnp.arange(12), cont_BxL, jnp.asarray(CONT_START))
  counts_BxG = np.asarray(masked.sum(-1))
  for b in range(2):  # L = 3: each count 1, 2, 3 exactly 12 / 3 times; weight L / l
    assert sorted(counts_BxG[b]) == [1] * 4 + [2] * 4 + [3] * 4
  np.testing.assert_allclose(np.asarray(weight), 3 / counts_BxG)
  assert np.all(np.asarray(masked) <= np.asarray(cont_BxL)[:, None])
  assert np.array_equal(np.asarray(masked), np.asarray(scored))
  # Different draws choose different subsets of the same size.
  assert len({tuple(m) for m in np.asarray(masked[0])[counts_BxG[0] == 1]}) > 1


def test_iid_mask_rates_are_stratified_over_the_samples():
  s = 16
  cont_BxL = likelihood.continuation_mask(jnp.asarray(CONT_START), jnp.asarray(LENGTHS), 8)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(0), i))(jnp.arange(2))
  _, _, weight_BxG = jax.jit(lambda k, d, c, st: likelihood.sample_masks(
      "iid", k, d, c, st, num_samples=s, eps=1e-3))(keys, jnp.arange(s), cont_BxL,
                                                     jnp.asarray(CONT_START))
  t_BxG = 1 / np.asarray(weight_BxG)
  # One t in each stratum [k/S, (k+1)/S) (the first clipped at eps at worst).
  np.testing.assert_array_equal(np.floor(t_BxG * s), np.tile(np.arange(s), (2, 1)))


def test_context_free_model_makes_fixed_count_exact_but_not_iid(model_and_params):
  model, _ = model_and_params
  uniform = jax.tree.map(jnp.zeros_like, model.abstract_params)  # every logit 0
  fixed = _score(model, uniform, "fixed_count", num_samples=4)
  # Every sample masks l tokens of log-prob -log V with weight L / l: exactly -L log V.
  np.testing.assert_allclose(fixed["samples_BxS"], -3 * np.log(V), rtol=1e-6)
  np.testing.assert_allclose(fixed["stderr_B"], 0, atol=1e-6)
  assert np.all(_score(model, uniform, "iid", num_samples=4)["stderr_B"] > 0.1)


def test_estimates_do_not_depend_on_row_padding_or_samples_per_pass(model_and_params):
  model, params = model_and_params
  base = _score(model, params, "fixed_count", num_samples=4)
  # Same requests in reverse order, padded to 16, next to a filler row, 2 samples per pass.
  tokens = np.zeros((3, 16), np.int32)
  tokens[0, :8], tokens[1, :8], tokens[2, :4] = TOKENS[1], TOKENS[0], [1, 1, 2, 3]
  moved = _score(model, params, "fixed_count", num_samples=4, samples_per_pass=2, tokens=tokens,
                 cont_start=np.array([1, 2, 1]), lengths=np.array([4, 5, 4]),
                 ids=np.array([12, 11, 5], np.uint32))
  np.testing.assert_allclose(moved["samples_BxS"][[1, 0]], base["samples_BxS"], rtol=1e-5,
                             atol=1e-6)
  other_seed = _score(model, params, "fixed_count", num_samples=4, seed=1)
  assert not np.allclose(other_seed["mean_B"], base["mean_B"])


def test_greedy_means_the_fully_masked_argmax_is_the_continuation(model_and_params):
  model, params = model_and_params
  tokens = TOKENS.copy()
  for b in range(2):  # the argmax with the continuation masked does not depend on its tokens
    full = np.arange(CONT_START[b], LENGTHS[b])
    x = tokens[b, :LENGTHS[b]].copy()
    x[full] = MASK
    logits = _logits(model, params, x, causal=False)
    tokens[b, full] = np.asarray(jnp.argmax(logits, -1))[full]
  tokens[1, CONT_START[1]] = (tokens[1, CONT_START[1]] + 1) % MASK  # break row 1
  out = _score(model, params, "chain", tokens=tokens)
  assert out["greedy_B"].tolist() == [True, False]


def test_ar_loglikelihood_is_the_log_softmax_sum_of_an_unpadded_forward(model_and_params):
  model, params = model_and_params
  logprob, greedy = jax.jit(lambda p, *a: likelihood.ar_loglikelihood(model, p, *a))(
      params, jnp.asarray(TOKENS), jnp.asarray(CONT_START), jnp.asarray(LENGTHS))
  for b in range(2):
    row = TOKENS[b, :LENGTHS[b]]
    logits = _logits(model, params, row, causal=True)
    logp = np.asarray(jax.nn.log_softmax(logits))
    expected = sum(logp[j - 1, row[j]] for j in range(CONT_START[b], LENGTHS[b]))
    assert float(logprob[b]) == pytest.approx(expected, rel=1e-5)
    is_greedy = all(np.argmax(logp[j - 1]) == row[j] for j in range(CONT_START[b], LENGTHS[b]))
    assert bool(greedy[b]) == is_greedy


def test_ar_greedy_is_true_for_a_greedy_decoded_continuation(model_and_params):
  model, params = model_and_params
  row = [1, 2, 0, 0, 0]
  for j in range(2, 5):  # causal: the padding after position j - 1 does not change its logits
    row[j] = int(jnp.argmax(_logits(model, params, row, causal=True)[j - 1]))
  tokens = jnp.asarray([row + [0, 0], row[:4] + [(row[4] + 1) % MASK, 0, 0]])
  _, greedy = jax.jit(lambda p, *a: likelihood.ar_loglikelihood(model, p, *a))(
      params, tokens, jnp.array([2, 2]), jnp.array([5, 5]))
  assert greedy.tolist() == [True, False]


def _full_logits_samples(model, params, estimator, num_draws, cfg_scale, seed=0):
  """Reference per-sample values through the full [rows, L, V] logits (the pre-window path):
  masks drawn on the full rows, every position projected, then only the scored ones summed."""
  l = TOKENS.shape[1]
  cont_BxL = likelihood.continuation_mask(jnp.asarray(CONT_START), jnp.asarray(LENGTHS), l)
  keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(seed), i))(jnp.asarray(IDS))
  masked, scored, weight = likelihood.sample_masks(
      estimator, keys, jnp.arange(num_draws), cont_BxL, jnp.asarray(CONT_START),
      num_samples=num_draws, eps=1e-3)
  b, s = weight.shape
  inputs = jnp.where(masked, MASK, jnp.asarray(TOKENS)[:, None]).reshape(b * s, l)
  lengths = jnp.repeat(jnp.asarray(LENGTHS), s)
  logits = model.apply(params, inputs, causal=False, lengths_B=lengths)[0]
  if cfg_scale:
    context = (jnp.arange(l)[None] < jnp.repeat(jnp.asarray(CONT_START), s)[:, None])
    uncond = model.apply(params, jnp.where(context, MASK, inputs), causal=False,
                         lengths_B=lengths)[0]
    logits = (1 + cfg_scale) * logits - cfg_scale * uncond
  targets = jnp.repeat(jnp.asarray(TOKENS), s, axis=0)
  logp = jnp.take_along_axis(jax.nn.log_softmax(logits), targets[..., None], -1)[..., 0]
  return (logp.reshape(b, s, l) * scored).sum(-1) * weight


@pytest.mark.parametrize("estimator,cfg_scale", [("iid", 0.7), ("fixed_count", 0.0),
                                                 ("chain", 0.0)])
def test_head_on_the_window_equals_the_full_logits(model_and_params, estimator, cfg_scale):
  model, params = model_and_params
  # 2 samples per pass: the window's masks are carried back onto tiled rows ('chain': 4 passes
  # of 1, the setting other tests compile).
  g = 1 if estimator == "chain" else 2
  out = _score(model, params, estimator, num_samples=g * 2, samples_per_pass=g,
               cfg_scale=cfg_scale)
  ref = jax.jit(lambda p: _full_logits_samples(model, p, estimator, 4, cfg_scale))
  np.testing.assert_allclose(out["samples_BxS"], np.asarray(ref(params)), rtol=1e-5, atol=1e-5)


def test_window_at_the_row_end_and_a_continuation_longer_than_the_window(model_and_params):
  model, params = model_and_params
  # Row 0 ends at L = 8: window positions 5, 6, 7 and 7 again (clipped). Row 1's 6-token
  # continuation exceeds the window (max_cont_len=4): NaN, never a truncated bound.
  tokens = np.array([[1, 2, 0, 3, 1, 0, 2, 1], [2, 2, 1, 3, 0, 1, 2, 3]], np.int32)
  out = _score(model, params, "chain", tokens=tokens, cont_start=np.array([5, 1]),
               lengths=np.array([8, 7]))
  row = tokens[0]
  expected = sum(_bidirectional_logp(model, params, row, range(i, 8))[i] for i in range(5, 8))
  assert out["mean_B"][0] == pytest.approx(expected, rel=1e-5)
  assert np.isnan(out["mean_B"][1]) and np.isnan(out["stderr_B"][1]) and not out["greedy_B"][1]


def test_unknown_estimator_is_a_config_error(model_and_params):
  model, params = model_and_params
  with pytest.raises(ConfigError, match="unknown DLM likelihood estimator 'elbo'"):
    _score(model, params, "elbo")
  with pytest.raises(ConfigError, match="does not divide"):
    _score(model, params, "iid", num_samples=6, samples_per_pass=4)
  _JITTED.clear()
