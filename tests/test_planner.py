"""The planner: a run's and a study's cost from the config alone, exact on small cases."""
import json
import os
import subprocess
import sys

import pytest

from _shared import cli_env, tiny_config
from dlmscale import compile as compile_lib
from dlmscale import flops, planner
from dlmscale.errors import ConfigError
from dlmscale.models.model import build_model
from dlmscale import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB = 320  # the byte tokenizer's ids rounded up to 64


def test_accelerators_by_name():
  assert planner.accelerator("v5p-128") == planner.Accelerator("v5p-128", 64, 459e12)
  assert planner.accelerator("8xH100") == planner.Accelerator("8xH100", 8, 989e12)
  assert planner.accelerator("a100").chips == 1
  with pytest.raises(ConfigError, match="unknown accelerator 'v9-8'.*8xH100"):
    planner.accelerator("v9-8")


def test_a_run_is_priced_from_its_config():
  cfg = tiny_config(**{"objectives": ("mdm",)})
  row = planner.plan_run(cfg, "tiny", planner.accelerator("v5p-8"), 0.5, VOCAB)
  model = build_model(config_lib.model_config(cfg, VOCAB))
  steps = cfg.data.total_tokens // (cfg.train.global_batch * cfg.data.seq_len)
  assert (row["steps"], row["tokens"]) == (steps, steps * 16 * 32)
  assert row["params"] == model.param_counts()["total"] == row["active_params"]
  assert row["flops_per_token"] == flops.train_flops_per_token(model.cfg, 32, causal=False)
  assert row["train_flops"] == row["flops_per_token"] * row["tokens"]
  assert row["epochs"] == row["tokens"] / cfg.data.unique_tokens
  assert row["chip_hours"] == pytest.approx(row["train_flops"] / (459e12 * 0.5) / 3600)
  assert row["wall_hours"] == pytest.approx(row["chip_hours"] / 4)


def test_ar_attention_is_causal_halved_and_the_dlms_is_full():
  ar = planner.plan_run(tiny_config(**{"objectives": ("ar",)}), "a", None, 0.4, VOCAB)
  dlm = planner.plan_run(tiny_config(**{"objectives": ("mdm",)}), "d", None, 0.4, VOCAB)
  m = build_model(config_lib.model_config(tiny_config(), VOCAB)).cfg
  attention = 12 * m.num_layers * m.num_heads * m.head_dim * 32
  assert dlm["flops_per_token"] - ar["flops_per_token"] == attention / 2
  assert "chip_hours" not in ar  # no accelerator, no chip-hours


def test_moe_counts_active_parameters():
  cfg = tiny_config(**{"model.num_experts": 8, "model.experts_per_token": 2})
  row = planner.plan_run(cfg, "moe", None, 0.4, VOCAB)
  assert row["active_params"] < row["params"]


def test_bad_mfu_is_a_one_line_error():
  with pytest.raises(ConfigError, match=r"--mfu=1.5 must be in \(0, 1\]"):
    planner.plan_run(tiny_config(), "x", None, 1.5, VOCAB)


def test_plan_mode_prices_a_whole_study_grid(tmp_path_factory):
  """A study file without arguments means its whole grid at --scale."""
  done = subprocess.run([sys.executable, "-m", "dlmscale.main", "--mode=plan",
                         "--config=experiments/crossover.py", "--scale=cpu", "--topology=8xH100"],
                        cwd=ROOT, env=cli_env(tmp_path_factory), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = json.loads(done.stdout[done.stdout.index("\n[") + 1:])
  assert len(rows) == 10 and {r["epochs"] for r in rows} == {192, 96, 64, 9.6, 1}
  assert all(r["accelerator"] == "8xH100" and r["chips"] == 8 for r in rows)
  assert "total: 10 runs" in done.stdout


@pytest.mark.skipif(not compile_lib.libtpu_available(), reason="libtpu not installed")
def test_plan_compile_adds_per_chip_memory(tmp_path_factory):
  done = subprocess.run([sys.executable, "-m", "dlmscale.main", "--mode=plan",
                         "--config=tests/configs/tiny.py", "--config.objectives=ar",
                         "--config.model.vocab_size=320", "--topology=v5p-8", "--compile"],
                        cwd=ROOT, env=cli_env(tmp_path_factory), capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  [row] = json.loads(done.stdout[done.stdout.index("\n[") + 1:])
  assert 0 < row["memory_per_chip_gib"] < 1 and row["fits"] is True


def test_a_config_with_two_objectives_is_priced_once_per_objective(tmp_path_factory):
  done = subprocess.run([sys.executable, "-m", "dlmscale.main", "--mode=plan",
                         "--config=tests/configs/tiny.py", "--topology=v5p-8"],
                        cwd=ROOT, env=cli_env(tmp_path_factory), capture_output=True, text=True,
                        timeout=300)
  assert done.returncode == 0, done.stderr[-2000:]
  rows = json.loads(done.stdout[done.stdout.index("\n[") + 1:])
  assert [(r["run"], r["objective"]) for r in rows] == [("tiny.py:ar", "ar"), ("tiny.py:mdm", "mdm")]
  assert rows[1]["flops_per_token"] > rows[0]["flops_per_token"]
