"""Config schema: defaults validate, every bad value is a one-line ConfigError naming the key."""
import pytest

from dlmscale import config
from dlmscale.errors import ConfigError


def test_defaults_validate_and_objectives_accept_comma_lists():
  c = config.default_config()
  config.validate(c)
  c.objectives = ("ar, mdm",)  # what `--config.objectives=ar,mdm` gives
  assert config.objective_names(c) == ("ar", "mdm")
  c.objectives = ("ar,ar_dropout", "mdm")
  assert config.objective_names(c) == ("ar", "ar_dropout", "mdm")
  config.validate(c)


@pytest.mark.parametrize("mutate, message", [
    (lambda c: c.train.update({"lr_peak": 1.0}), "unknown config key 'train.lr_peak'"),
    (lambda c: setattr(c, "objectives", ("ar", "nope")), "unknown objective 'nope'"),
    (lambda c: setattr(c, "objectives", ()), "config.objectives is empty"),
    (lambda c: c.objective_args.mdm.update({"weigting": "inv_t"}), "has no argument 'weigting'"),
    (lambda c: setattr(c.model, "remat", "some"), "unknown model.remat 'some'"),
    (lambda c: c.model.update(d_model=65, num_heads=4), "not divisible by model.num_heads"),
    (lambda c: c.model.update(num_heads=4, num_kv_heads=3), "not a multiple of"),
    (lambda c: setattr(c.train, "schedule", "linear"), "unknown train.schedule"),
    (lambda c: c.train.update(global_batch=10, grad_accum=4), "not divisible by train.grad_accum"),
    (lambda c: setattr(c.train, "log_every", 0), "train.log_every must be >= 1"),
])
def test_bad_values_name_the_key(mutate, message):
  c = config.default_config()
  mutate(c)
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(".", r"\.")) as e:
    config.validate(c)
  assert "\n" not in str(e.value)


def test_model_vocab_is_rounded_up_from_the_tokenizer_and_never_smaller():
  c = config.default_config()
  assert config.model_config(c, 258).vocab_size == 320  # multiple of 64
  c.model.vocab_size = 200
  with pytest.raises(ConfigError, match="smaller than the tokenizer"):
    config.model_config(c, 258)


def test_a_config_saved_before_new_keys_existed_is_not_a_different_config():
  """Runs saved by an older dlmscale stay resumable and evaluable: a missing key counts as its
  default, a key dropped from the schema is ignored, a real change is still named."""
  import json  # noqa: PLC0415
  from dlmscale.config import changed_keys, default_config, to_json  # noqa: PLC0415
  now = json.loads(to_json(default_config()))
  old = json.loads(to_json(default_config()))
  del old["train"]["restore_fallback"]
  old["train"]["a_key_since_removed"] = 1
  assert changed_keys(old, now) == []
  now["train"]["restore_fallback"] = True
  now["train"]["lr"] = 1.0
  assert changed_keys(old, now) == ["train.lr", "train.restore_fallback"]
  assert changed_keys(old, now, allowed=("train.restore_fallback",)) == ["train.lr"]
