"""Validation estimators: exact AR NLL and the DLM ELBO bound."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlmscale
from dlmscale import parallel
from dlmscale.evaluation.validation import evaluate_validation

V, L = 64, 12
RULES = tuple(dlmscale.default_config().rules)


@pytest.fixture(scope="module")
def model_and_params():
  model = dlmscale.build_model(dlmscale.ModelConfig(
      vocab_size=V, num_layers=2, d_model=32, num_heads=4, d_ff=64, dtype="float32",
      tie_embeddings=False))
  return model, model.init(jax.random.key(0))


def _tokens(n):
  return np.asarray(jax.random.randint(jax.random.key(3), (n, L), 0, V - 1), np.int32)


def test_ar_nll_equals_direct_log_softmax_sum(model_and_params):
  model, params = model_and_params
  val = _tokens(10)
  mesh = parallel.make_mesh({"data": -1})
  out = evaluate_validation(model, params, val, "ar", mesh=mesh, rules=RULES, batch_size=8,
                            num_samples=1, mask_id=V - 1)
  logits, _ = model.apply(params, jnp.asarray(val), causal=True)
  logp = jax.nn.log_softmax(logits[:, :-1], -1)
  direct = -np.take_along_axis(np.asarray(logp), val[:, 1:, None], -1).mean()
  assert out["mean"] == pytest.approx(float(direct), rel=1e-5)
  assert out["sequences"] == 10 and out["tokens"] == 10 * (L - 1)


def test_dlm_elbo_with_uniform_logits_is_log_vocab(model_and_params):
  model, params = model_and_params
  zero_head = dict(params, head=jnp.zeros_like(params["head"]))
  mesh = parallel.make_mesh({"data": -1})
  out = evaluate_validation(model, zero_head, _tokens(64), "dlm", mesh=mesh, rules=RULES,
                            batch_size=16, num_samples=16, mask_id=V - 1)
  # E[#masked / t] = L for every t, so the bound is log V up to Monte Carlo noise.
  assert abs(out["mean"] - np.log(V)) < 4 * out["stderr"] + 1e-3


def test_dlm_elbo_is_deterministic_given_the_seed(model_and_params):
  model, params = model_and_params
  mesh = parallel.make_mesh({"data": -1})
  kw = dict(mesh=mesh, rules=RULES, batch_size=8, num_samples=4, mask_id=V - 1)
  a = evaluate_validation(model, params, _tokens(9), "dlm", seed=1, **kw)
  b = evaluate_validation(model, params, _tokens(9), "dlm", seed=1, **kw)
  c = evaluate_validation(model, params, _tokens(9), "dlm", seed=2, **kw)
  assert a == b
  assert a["mean"] != c["mean"]
  assert a["mean"] > 0 and np.isfinite(a["stderr"])
