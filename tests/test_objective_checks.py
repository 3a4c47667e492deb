"""Objective arguments are checked when the config is, model dropout reaches every objective in
training (and never evaluation), and a loss that is not the ELBO is not logged as one."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmscale import config as config_lib
from dlmscale import objectives, train
from dlmscale.errors import ConfigError
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig

from _shared import random_params

VOCAB, MASK_ID = 64, 63


def _model(**dropout):
  return build_model(ModelConfig(vocab_size=VOCAB, num_layers=2, d_model=32, num_heads=4,
                                 d_ff=64, dtype="float32", **dropout))


def _loss(model, params, name, rng_seed=0, **args):
  fn = train.make_loss_fn(model, objectives.get(name),
                          objectives.resolve_args(name, args, mask_id=MASK_ID))
  tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, MASK_ID)
  return fn(params, tokens, jax.random.key(rng_seed))


@pytest.mark.parametrize("name", ["ar", "mdm", "ar_input_mask"])
def test_model_dropout_is_applied_in_training_by_every_objective(name):
  plain = _model()
  params = random_params(plain, seed=0)
  dropped = _model(dropout_residual=0.3, dropout_mlp=0.3)
  loss_plain, _ = _loss(plain, params, name)
  loss_dropped, _ = _loss(dropped, params, name)
  assert not np.isclose(float(loss_plain), float(loss_dropped)), name
  # A different step key draws other dropout masks; the same key, the same ones.
  assert float(_loss(dropped, params, name, rng_seed=0)[0]) == float(loss_dropped)
  assert float(_loss(dropped, params, name, rng_seed=5)[0]) != float(loss_dropped)
  # Evaluation calls the network without a key: no dropout there.
  tokens = jnp.arange(16)[None] % MASK_ID
  np.testing.assert_array_equal(dropped.apply(params, tokens, causal=True)[0],
                                plain.apply(params, tokens, causal=True)[0])


def test_zero_dropout_trains_exactly_as_before():
  """The step key passed for dropout changes nothing when every rate is 0."""
  model = _model()
  params = random_params(model, seed=0)
  args = objectives.resolve_args("mdm", {}, mask_id=MASK_ID)
  tokens = jax.random.randint(jax.random.key(1), (4, 16), 0, MASK_ID)
  rng = jax.random.key(0)
  with_key, _ = train.make_loss_fn(model, objectives.get("mdm"), args)(params, tokens, rng)
  without, _ = objectives.get("mdm")(model.apply, params, {"tokens": tokens}, rng, args)
  assert float(with_key) == float(without)


def test_inv_masked_fraction_is_not_labelled_elbo():
  model = _model()
  params = random_params(model, seed=0)
  _, inv_t = _loss(model, params, "mdm")
  _, fraction = _loss(model, params, "mdm", weighting="inv_masked_fraction")
  assert "elbo" in inv_t and "weighted_masked_ce" not in inv_t
  assert "weighted_masked_ce" in fraction and "elbo" not in fraction


@pytest.mark.parametrize("name,args,message", [
    ("mdm", {"weighting": "inv_tt"}, "unknown objective_args.mdm.weighting 'inv_tt'"),
    ("mdm", {"eps": 0.0}, "objective_args.mdm.eps must be in (0, 1)"),
    ("mdm", {"random_length_prob": 2.0}, "objective_args.mdm.random_length_prob must be in"),
    ("ar_input_mask", {"rate": 1.0}, "objective_args.ar_input_mask.rate must be in [0, 1)"),
    ("ar_dropout", {"rate": -0.1}, "objective_args.ar_dropout.rate must be in [0, 1)"),
    ("ar_dropout", {"sites": ("attn",)}, "objective_args.ar_dropout.sites has unknown sites"),
])
def test_bad_objective_arguments_fail_at_config_validation(name, args, message):
  cfg = config_lib.default_config()
  cfg.objectives = (name,)
  cfg.objective_args[name].update(args)
  with pytest.raises(ConfigError) as e:
    config_lib.validate(cfg)
  assert message in str(e.value)


@pytest.mark.parametrize("key,value,message", [
    ("cache", "dual2", "unknown cache 'dual2'"),
    ("remasking", "x", "unknown remasking 'x'"),
    ("top_p", 0.0, "top_p must be in (0, 1]"),
    ("threshold", -1.0, "threshold must be >= 0"),
])
def test_bad_sample_settings_fail_at_config_validation(key, value, message):
  cfg = config_lib.default_config()
  cfg.sample[key] = value
  with pytest.raises(ConfigError) as e:
    config_lib.validate(cfg)
  assert str(e.value).startswith("config sample.*: ") and message in str(e.value)
