"""The configured evaluation of a model: held-out validation bound plus benchmark tasks.

Used after training, by `--mode=eval`, and during training every `eval.every` steps and at epoch
boundaries (`eval.at_epochs`), so a run's log shows how validation loss and benchmark accuracy
move together as the data repeats.
"""
from __future__ import annotations

import dataclasses
import math

from dlmscale.errors import ConfigError
from dlmscale.evaluation import likelihood, tasks


def parse_task_paths(text: str) -> dict[str, str]:
  """'hellaswag=/data/hs.jsonl,arc_easy=gs://b/arc' -> {task: path} (eval.task_paths)."""
  out = {}
  for item in filter(None, (s.strip() for s in text.split(","))):
    name, sep, path = item.partition("=")
    if not sep or not name.strip() or not path.strip():
      raise ConfigError(f"eval.task_paths entry {item!r} is not task=path: write e.g. "
                        "'hellaswag=/data/hellaswag.jsonl,arc_easy=/data/arc'")
    out[name.strip()] = path.strip()
  return out


def task_list(tasks) -> tuple[str, ...]:
  """eval.tasks as a tuple; 'hellaswag,arc_easy' (a command-line override) is split on commas."""
  items = (tasks,) if isinstance(tasks, str) else tuple(tasks)
  return tuple(n.strip() for item in items for n in item.split(",") if n.strip())


def check_eval_config(cfg) -> None:
  """One-line errors for the eval section, before any model is built."""
  e = cfg.eval
  names = tasks.check_task_names(task_list(e.tasks)) if task_list(e.tasks) else ()
  extra = sorted(set(parse_task_paths(e.task_paths)) - set(names))
  if extra:
    raise ConfigError(f"eval.task_paths names {extra}, which are not in eval.tasks: add them to "
                      "eval.tasks or remove their paths")
  likelihood.check_estimator(e.dlm_estimator)
  for key in ("every", "num_fewshot", "limit", "max_length"):
    if e[key] < 0:
      raise ConfigError(f"eval.{key}={e[key]} must be >= 0")
  if e.dlm_samples < 1:
    raise ConfigError(f"eval.dlm_samples={e.dlm_samples} must be >= 1")


def is_eval_step(done: int, end: int, every: int, at_epochs: bool, epoch_at) -> bool:
  """Whether to evaluate after step `done` (before the last step: the final evaluation runs then).

  epoch_at(step) -> epochs consumed before `step`; an epoch ends at the first step whose
  count of whole epochs is higher than the previous step's."""
  if done >= end:
    return False
  if every and done % every == 0:
    return True
  return at_epochs and math.floor(epoch_at(done)) > math.floor(epoch_at(done - 1))


def score_tasks(lm, cfg) -> dict[str, dict]:
  """cfg.eval.tasks scored for a LoadedModel (exact for AR, the configured bound for DLM)."""
  from dlmscale.evaluation.multiple_choice import evaluate_tasks
  from dlmscale.evaluation.scorer import Scorer
  e = cfg.eval
  names = task_list(e.tasks)
  if not names:
    return {}
  if e.max_length:
    lm = dataclasses.replace(lm, seq_len=e.max_length)
  scorer = Scorer(lm, estimator=e.dlm_estimator, num_samples=e.dlm_samples,
                  cfg_scale=e.cfg_scale, batch_size=e.batch_size, seed=cfg.seed)
  return evaluate_tasks(scorer, names, num_fewshot=e.num_fewshot, limit=e.limit,
                        seed=cfg.seed, paths=parse_task_paths(e.task_paths))


def flat_task_metrics(results: dict[str, dict]) -> dict[str, float]:
  """{task/metric: value} of the scalar metrics, for metrics.jsonl and TensorBoard."""
  return {f"{task}/{k}": float(v) for task, m in results.items() for k, v in m.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}
