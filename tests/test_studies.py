"""The paper's studies (experiments/<study>.py over configs/studies.py): every run at every scale
is a valid config, the grids and epochs are the paper's at every scale, runs that differ only in
objective share one token stream, and bad arguments are one-line errors."""
import functools
import importlib.util
import json
import os
import re

import pytest
from absl import flags
from ml_collections import config_flags

from configs import models, optimizers, studies
from dlmscale import config as config_lib
from dlmscale.data import tokenizers
from dlmscale.data.prepare_spec import PrepareSpec
from dlmscale.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUNS_PER_SCALE = {"crossover": 10, "long_run": 2, "data_quality": 6, "model_size": 8,
                  "sparse_dense": 6, "input_noise": 7, "dropout": 7, "coder": 2}
STUDIES = sorted(RUNS_PER_SCALE)
PAPER_EPOCHS = {"0.5B": 192, "1B": 96, "1.5B": 64, "10B": 9.6, "96B": 1}
# Arguments that choose the objective; all others pick the token stream and the model.
OBJECTIVE_ARGS = ("objective", "rate")


@functools.cache
def _load(name):
  path = os.path.join(ROOT, "experiments", f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"study_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _args(run: str) -> dict:
  return dict(item.split("=") for item in run.split(","))


def _schedule(cfg):
  """(steps, epochs) as the token stream computes them: whole sequences and whole steps."""
  d, batch = cfg.data, cfg.train.global_batch
  steps = d.total_tokens // (batch * d.seq_len)
  return steps, steps * batch / (d.unique_tokens // d.seq_len)


def _without_objective(cfg) -> dict:
  out = json.loads(config_lib.to_json(cfg))
  del out["objectives"], out["objective_args"]
  return out


@pytest.mark.parametrize("scale", studies.SCALES)
@pytest.mark.parametrize("name", STUDIES)
def test_every_run_is_a_valid_config_with_one_objective_and_evaluation_points(name, scale):
  runs = _load(name).runs(scale)
  assert len(runs) == len(set(runs)) == RUNS_PER_SCALE[name]
  for run in runs:
    assert _args(run)["scale"] == scale
    cfg = _load(name).get_config(run)
    config_lib.validate(cfg)
    PrepareSpec.from_config(cfg.data)  # known source kinds, a valid preparation
    tokenizers.canonical_spec(cfg.data.tokenizer)
    assert len(config_lib.objective_names(cfg)) == 1
    steps, epochs = _schedule(cfg)
    assert steps >= 100 and epochs > 0.99
    # Evaluations during training, plus the final one.
    points = ((steps - 1) // cfg.eval.every if cfg.eval.every else 0) + 1
    if scale == "paper":
      assert cfg.eval.at_epochs == (epochs <= 200)
      points += int(epochs) if cfg.eval.at_epochs else 0
      assert 20 <= points <= 230, (run, points)
    else:
      assert not cfg.eval.at_epochs and 10 <= points <= 20, (run, points)
    precision = {"paper": "bfloat16", "gpu": "bfloat16", "cpu": "float32"}[scale]
    assert cfg.model.dtype == precision and cfg.model.param_dtype == "float32"
    assert cfg.model.remat == ("full" if scale == "paper" else "none")
    assert cfg.data.seq_len == {"paper": 2048, "gpu": 512, "cpu": 128}[scale]


@pytest.mark.parametrize("name", STUDIES)
def test_no_argument_is_the_first_paper_run(name):
  module = _load(name)
  default = config_lib.to_json(module.get_config())
  assert default == config_lib.to_json(module.get_config(""))
  assert default == config_lib.to_json(module.get_config(module.runs()[0]))
  assert module.runs() == module.runs("paper")


@pytest.mark.parametrize("scale", studies.SCALES)
@pytest.mark.parametrize("name", STUDIES)
def test_runs_differing_only_in_objective_share_stream_model_and_optimizer(name, scale):
  groups = {}
  for run in _load(name).runs(scale):
    key = tuple(sorted((k, v) for k, v in _args(run).items() if k not in OBJECTIVE_ARGS))
    groups.setdefault(key, []).append(run)
  assert all(len(g) >= 2 for g in groups.values())
  for group in groups.values():
    cfgs = [_load(name).get_config(run) for run in group]
    shared = _without_objective(cfgs[0])
    for run, cfg in zip(group, cfgs):
      assert _without_objective(cfg) == shared, run  # data, batch, model, optimizer, mesh, eval
      args = _args(run)
      assert config_lib.objective_names(cfg) == (args["objective"],)
      if "rate" in args:
        assert cfg.objective_args[args["objective"]].rate == float(args["rate"])


@pytest.mark.parametrize("scale", studies.SCALES)
def test_crossover_grid_keeps_the_paper_epochs_at_every_scale(scale):
  module = _load("crossover")
  runs = [_args(r) for r in module.runs(scale)]
  assert {(r["unique"], r["objective"]) for r in runs} == {
      (u, o) for u in PAPER_EPOCHS for o in ("ar", "mdm")}
  totals = set()
  for unique, epochs in PAPER_EPOCHS.items():
    cfg = module.get_config(f"unique={unique},objective=mdm,scale={scale}")
    assert _schedule(cfg)[1] == pytest.approx(epochs, rel=0.01)
    totals.add(cfg.data.total_tokens)
  assert len(totals) == 1  # one compute budget across the unique budgets


def test_crossover_paper_run_has_the_paper_numbers():
  cfg = _load("crossover").get_config("unique=0.5B,objective=mdm,scale=paper")
  assert (cfg.data.seq_len, cfg.train.global_batch) == (2048, 256)
  assert (cfg.data.total_tokens, cfg.data.unique_tokens) == (96 * 10**9, 5 * 10**8)
  assert {k: cfg.model[k] for k in models.PAPER_1B} == models.PAPER_1B
  assert {k: cfg.train[k] for k in optimizers.PAPER} == optimizers.PAPER
  assert cfg.data.tokenizer == studies.GPT2_TOKENIZER and cfg.objectives == ("mdm",)


def test_paper_batch_follows_model_size():
  def batch(name, arg):
    return _load(name).get_config(arg + ",scale=paper").train.global_batch
  assert [batch("model_size", f"model={m}") for m in ("1B", "2B", "4B", "8B")] == [
      256, 512, 512, 1024]
  assert [batch("sparse_dense", f"model={m}") for m in ("1B1A", "8B1A", "8B8A")] == [
      256, 256, 1024]
  assert batch("coder", "objective=ar") == 512


@pytest.mark.parametrize("scale", studies.SCALES)
def test_a_models_reference_run_is_the_same_run_in_every_study(scale):
  """The 1B x 1B-unique x 96-epoch run appears in five studies, the 8B dense one in two: each is
  one config (one stream), so a sweep can train it once."""
  def cfg(name, arg):
    return config_lib.to_json(_load(name).get_config(f"{arg},scale={scale}"))
  for objective in ("ar", "mdm"):
    one_b = {cfg("crossover", f"unique=1B,objective={objective}"),
             cfg("model_size", f"model=1B,objective={objective}"),
             cfg("sparse_dense", f"model=1B1A,objective={objective}"),
             cfg("input_noise", f"objective={objective}"),
             cfg("dropout", f"objective={objective}")}
    assert len(one_b) == 1
    assert (cfg("model_size", f"model=8B,objective={objective}")
            == cfg("sparse_dense", f"model=8B8A,objective={objective}"))


def test_paper_sparse_runs_keep_the_sparse_study_files_choices():
  for model, file in (("1B1A", "dense_1b"), ("8B1A", "moe_1b"), ("8B8A", "dense_8b")):
    run = _load("sparse_dense").get_config(f"model={model},objective=ar,scale=paper")
    original = _load(file).get_config()
    for section in ("model", "train", "mesh"):
      assert run[section].to_dict() == original[section].to_dict(), (model, section)


def test_data_quality_levels_are_distinct_offline_corpora_below_paper_scale():
  module = _load("data_quality")
  for scale in studies.SCALES:
    sources = {module.get_config(f"quality={q},scale={scale}").data.sources
               for q in module.LEVELS}
    assert len(sources) == 3
  low, medium, high = (module.get_config(f"quality={q},scale=cpu").data.sources.split("?")[0]
                       for q in module.LEVELS)
  assert (low, medium, high) == ("gcide", "linux_docs", "python_docs")


@pytest.mark.parametrize("name", STUDIES)
def test_unknown_argument_name_or_value_is_a_one_line_error_listing_the_valid_ones(name):
  module = _load(name)
  names = list(_args(module.runs("cpu")[0]))
  with pytest.raises(ConfigError) as e:
    module.get_config("bogus=1")
  assert "\n" not in str(e.value) and all(n in str(e.value) for n in names)
  with pytest.raises(ConfigError, match=r"scale='tpu': use one of paper, gpu, cpu$"):
    module.get_config("scale=tpu")
  with pytest.raises(ConfigError, match="scale='tpu'"):
    module.runs("tpu")
  with pytest.raises(ConfigError, match="not name=value"):
    module.get_config("1b")


def test_crossover_unknown_budget_names_every_budget():
  with pytest.raises(ConfigError) as e:
    _load("crossover").get_config("unique=2B,objective=mdm")
  assert str(e.value) == ("crossover: unknown value unique='2B': use one of 0.5B, 1B, 1.5B, 10B, "
                          "96B")
  with pytest.raises(ConfigError, match="given twice"):
    _load("crossover").get_config("unique=1B,unique=10B")


@pytest.mark.parametrize("name", ["input_noise", "dropout"])
def test_noise_rate_needs_the_noisy_objective(name):
  with pytest.raises(ConfigError, match="rate applies only with objective=ar_"):
    _load(name).get_config("objective=ar,rate=0.5")


@pytest.mark.parametrize("name", ["quickstart", "dense_1b", "moe_1b", "dense_8b"])
def test_single_run_experiments_refuse_an_argument_in_one_line(name):
  module = _load(name)
  config_lib.validate(module.get_config())
  with pytest.raises(ConfigError, match=rf"^{name} takes no argument \(got '1b'\): ") as e:
    module.get_config("1b")
  assert "\n" not in str(e.value)


def test_the_config_flag_passes_the_argument_string():
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", None, flag_values=values)
  path = os.path.join(ROOT, "experiments", "input_noise.py")
  values(["prog", f"--config={path}:objective=ar_input_mask,rate=0.7,scale=cpu"])
  assert values.config.objectives == ("ar_input_mask",)
  assert values.config.objective_args.ar_input_mask.rate == 0.7
  assert values.config.model.d_model == models.TINY["d_model"]


# ---- the replication programme (experiments/replication.py) --------------------------------

def test_replication_is_the_crossover_grid_at_two_sizes_plus_noise_at_the_smallest_budget():
  rep, crossover = _load("replication"), _load("crossover")
  runs = rep.runs("cpu")
  assert len(runs) == 26 and len(set(runs)) == 26
  cfgs = {a: rep.get_config(a) for a in runs}
  for cfg in cfgs.values():
    config_lib.validate(cfg)
  # Its 1B ar/mdm runs are the crossover study's runs of the same budget, config for config.
  for unique in ("0.5B", "1B", "1.5B", "10B", "96B"):
    for objective in ("ar", "mdm"):
      mine = cfgs[f"unique={unique},model=1B,objective={objective},scale=cpu"]
      theirs = crossover.get_config(f"unique={unique},objective={objective},scale=cpu")
      assert config_lib.to_json(mine) == config_lib.to_json(theirs)
  # The 2B grid: a larger model, the same data and tokens, the paper's doubled batch.
  small = cfgs["unique=10B,model=1B,objective=ar,scale=cpu"]
  big = cfgs["unique=10B,model=2B,objective=ar,scale=cpu"]
  assert big.model.d_model > small.model.d_model and big.data == small.data
  assert big.train.global_batch == 2 * small.train.global_batch
  # Noise at the smallest budget (192 epochs), on the same stream as its ar / mdm runs.
  noisy = [a for a in runs if "rate=" in a]
  assert len(noisy) == 6
  base = cfgs["unique=0.5B,model=1B,objective=ar,scale=cpu"]
  for a in noisy:
    assert cfgs[a].data == base.data and cfgs[a].train == base.train
  assert cfgs["objective=ar_dropout,rate=0.9,scale=cpu"].objective_args.ar_dropout.rate == 0.9


@pytest.mark.parametrize("arg, message", [
    ("objective=ar_dropout,unique=10B", "noise runs are at unique=0.5B"),
    ("objective=mdm,rate=0.5", "rate applies only with"),
    ("model=8B", "unknown value model='8B'"),
])
def test_replication_argument_errors(arg, message):
  with pytest.raises(ConfigError, match=re.escape(message)):
    _load("replication").get_config(arg)
