"""Benchmark examples as scoring requests, and lm-evaluation-harness's few-shot prompt layout.

An `Example` holds, per option, the context and the continuation whose log-likelihood is scored.
Most tasks share one context and vary the continuation (" " + choice text); WinoGrande varies the
context and shares the continuation. A k-shot prompt is
  description + demo_1 + "\n\n" + ... + demo_k + "\n\n" + context,
each demo being a solved example (its gold context + continuation), as lm-eval builds it.
"""
from __future__ import annotations

import collections
import dataclasses
import functools

import numpy as np

from dlmscale.errors import ConfigError
from dlmscale.evaluation.tasks import files

FEWSHOT_DELIMITER = "\n\n"


@dataclasses.dataclass(frozen=True)
class Example:
  """contexts / continuations: one per option, or a single one shared by all options.

  choice_lengths: per option, the characters acc_norm divides by (lm-eval: the choice text
  without the leading space). description: text before the few-shot demos (MMLU's header).
  group: few-shot demos are drawn from examples of the same group (MMLU's subject)."""
  contexts: tuple[str, ...]
  continuations: tuple[str, ...]
  gold: int
  choice_lengths: tuple[int, ...]
  description: str = ""
  group: str = ""

  @property
  def num_options(self) -> int:
    return len(self.choice_lengths)

  def context(self, option: int) -> str:
    return self.contexts[option if len(self.contexts) > 1 else 0]

  def continuation(self, option: int) -> str:
    return self.continuations[option if len(self.continuations) > 1 else 0]

  @property
  def demo(self) -> str:
    """The solved example, as shown in a few-shot prompt."""
    return self.context(self.gold) + self.continuation(self.gold)

  def requests(self, demos: tuple[Example, ...] = ()) -> list[tuple[str, str]]:
    """(context, continuation) per option, after the description and the few-shot demos."""
    prefix = self.description + "".join(d.demo + FEWSHOT_DELIMITER for d in demos)
    return [(prefix + self.context(i), self.continuation(i)) for i in range(self.num_options)]


def choice_example(context: str, choices: list[str], gold: int, **kwargs) -> Example:
  """The common case: a shared context, continuation " " + choice, acc_norm over len(choice)."""
  return Example(contexts=(context,), continuations=tuple(" " + c for c in choices), gold=gold,
                 choice_lengths=tuple(len(c) for c in choices), **kwargs)


@dataclasses.dataclass(frozen=True)
class Task:
  """One benchmark split ready to score.

  output: 'multiple_choice' (acc, acc_norm) or 'loglikelihood' (one continuation: greedy acc and
  perplexity, LAMBADA). fewshot_pool: the train/dev split demos come from; None draws them from
  `examples` without the evaluated one. fewshot_first_n: take the pool's first k (lm-eval's MMLU)
  instead of a seeded random draw."""
  name: str
  output: str
  examples: tuple[Example, ...]
  fewshot_pool: tuple[Example, ...] | None = None
  fewshot_first_n: bool = False

  @functools.cached_property
  def _pool_by_group(self) -> dict[str, np.ndarray]:
    pool = self.examples if self.fewshot_pool is None else self.fewshot_pool
    groups = collections.defaultdict(list)
    for j, p in enumerate(pool):
      groups[p.group].append(j)
    return {g: np.asarray(js) for g, js in groups.items()}

  def demos(self, index: int, num_fewshot: int, seed: int) -> tuple[Example, ...]:
    """The few-shot demos of examples[index]: deterministic in (seed, index), never the example
    itself (nor a duplicate of it)."""
    if num_fewshot <= 0:
      return ()
    example = self.examples[index]
    same_split = self.fewshot_pool is None
    pool = self.examples if same_split else self.fewshot_pool
    candidates = self._pool_by_group.get(example.group, np.zeros(0, int))
    if not self.fewshot_first_n:
      candidates = candidates[np.random.default_rng([seed, index]).permutation(len(candidates))]
    chosen = []
    for j in candidates:
      if len(chosen) == num_fewshot:
        break
      if not (same_split and j == index) and pool[j] != example:
        chosen.append(pool[j])
    if len(chosen) < num_fewshot:
      where = f" (group {example.group})" if example.group else ""
      raise ConfigError(f"{self.name}: num_fewshot={num_fewshot} but only {len(chosen)} "
                        f"examples to draw demos from{where}; lower num_fewshot")
    return tuple(chosen)


def load_split_task(name: str, output: str, example_fn, path: str, split: str,
                    fewshot_split: str = "train") -> Task:
  """A task from the rows at `path` (`split` of a DatasetDict); a DatasetDict's `fewshot_split`,
  when it has one, is the few-shot pool, as lm-eval draws demos from the training split."""
  examples = tuple(files.convert(files.read_rows(path, split), example_fn))
  pool_rows = files.dataset_dict_rows(path, fewshot_split)
  pool = None if pool_rows is None else tuple(files.convert(pool_rows, example_fn))
  return Task(name, output, examples, pool)
