"""Evaluation during training and the eval config: when it runs, what it logs, its errors."""
import json
import math

import pytest

from _shared import tiny_config
from dlmscale import config as config_lib
from dlmscale.errors import ConfigError
from dlmscale.evaluation.suite import is_eval_step, parse_task_paths, task_list
from dlmscale.modes import train as train_all


def test_eval_steps_every_k_and_at_epoch_ends_never_at_the_last_step():
  epoch_at = lambda step: step * 16 / 40  # 40 unique rows, 16 per step: epochs end in 3, 5, 8
  steps = [d for d in range(1, 11) if is_eval_step(d, 10, 0, True, epoch_at)]
  assert steps == [3, 5, 8]
  assert [d for d in range(1, 11) if is_eval_step(d, 10, 4, False, epoch_at)] == [4, 8]
  assert [d for d in range(1, 11) if is_eval_step(d, 10, 4, True, epoch_at)] == [3, 4, 5, 8]
  # Every boundary is where the number of whole epochs seen goes up.
  for d in range(1, 10):
    assert is_eval_step(d, 10, 0, True, epoch_at) == (
        math.floor(epoch_at(d)) > math.floor(epoch_at(d - 1)))


def test_task_list_and_paths_parse_command_line_strings():
  assert task_list("hellaswag, arc_easy") == ("hellaswag", "arc_easy")
  assert task_list(("piqa",)) == ("piqa",)
  assert parse_task_paths("piqa=/d/p.jsonl, arc_easy=gs://b/arc") == {
      "piqa": "/d/p.jsonl", "arc_easy": "gs://b/arc"}
  with pytest.raises(ConfigError, match="not task=path"):
    parse_task_paths("piqa")


@pytest.mark.parametrize("overrides,message", [
    ({"eval.tasks": ("piqa", "nope")}, "unknown task 'nope'"),
    ({"eval.tasks": ("piqa",), "eval.task_paths": "arc_easy=/x"}, "not in eval.tasks"),
    ({"eval.dlm_estimator": "magic"}, "magic"),
    ({"eval.every": -1}, "eval.every"),
    ({"eval.dlm_samples": 0}, "eval.dlm_samples"),
])
def test_bad_eval_config_is_one_line(overrides, message):
  with pytest.raises(ConfigError, match=message) as e:
    config_lib.validate(tiny_config(**overrides))
  assert "\n" not in str(e.value)


def test_training_evaluates_on_schedule_and_logs_tasks_with_the_metrics(tmp_path):
  # 128 unique rows of 32 tokens, 16 rows per step: an epoch ends every 8 steps (16 in all).
  cfg = tiny_config(**{"objectives": ("mdm",), "data.unique_tokens": 128 * 32,
                       "eval.every": 5, "eval.at_epochs": True, "eval.tasks": ("mmlu_anatomy",),
                       "eval.limit": 4, "eval.dlm_samples": 4, "eval.max_sequences": 8})
  [result] = train_all(cfg, str(tmp_path))
  records = [json.loads(line) for line in (tmp_path / "mdm" / "metrics.jsonl").read_text()
             .splitlines()]
  evals = {r["step"]: r for r in records if "eval/val_mean" in r}
  assert sorted(evals) == [5, 8, 10, 15, 16]  # every 5, the epoch end at 8, and the final one
  for r in evals.values():
    assert 0 <= r["eval/mmlu_anatomy/acc"] <= 1 and r["eval/mmlu_anatomy/num_examples"] == 4
    assert math.isfinite(r["eval/mmlu_anatomy/nll_correct"]) and r["eval/val_mean"] > 0
  # Every log_every (2) steps and before each evaluation: the steps since the last log are
  # written first, never dropped or timed with the evaluation.
  assert [r["step"] for r in records if "train/loss" in r] == [2, 4, 5, 6, 8, 10, 12, 14, 15, 16]
  assert result["tasks"]["mmlu_anatomy"]["num_examples"] == 4
  assert result["val_mean"] == evals[16]["eval/val_mean"]


def test_a_run_resumes_with_other_evaluation_settings_but_not_other_training(tmp_path):
  from dlmscale.errors import CheckpointError
  from dlmscale.experiment import build_experiment
  from dlmscale.runner import run_training
  cfg = tiny_config(**{"objectives": ("ar",)})
  run_training(build_experiment(cfg, "ar"), str(tmp_path), stop_after=4)
  changed = tiny_config(**{"objectives": ("ar",), "eval.every": 2, "eval.limit": 3,
                           "eval.tasks": ("mmlu_anatomy",), "sample.max_new_tokens": 7,
                           "code.limit": 5})
  result = run_training(build_experiment(changed, "ar"), str(tmp_path), stop_after=6)
  assert result["steps"] == 6
  with pytest.raises(CheckpointError, match="train.lr"):
    run_training(build_experiment(tiny_config(**{"objectives": ("ar",), "train.lr": 1e-4}), "ar"),
                 str(tmp_path), stop_after=8)
