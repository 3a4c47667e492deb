"""The crossover: the evaluation point from which a DLM stays ahead of the AR run of its budget.

Definition (pure, on two curves of one metric): pair the AR and DLM evaluation points by tokens
seen; at each pair the DLM is *ahead* when its lead (DLM - AR where higher is better, AR - DLM
where lower is better) exceeds `z` (2) combined standard errors sqrt(se_AR^2 + se_DLM^2). The
crossover is the first pair from which the DLM is ahead at that pair and every later one. It
happened somewhere after the previous evaluation, so it is reported as the interval
[previous point, this point] in tokens and in epochs ([0, first point] when the DLM is ahead from
the first evaluation). A brief lead that is lost later, or a lead within the noise, is no
crossover. A point without a finite stderr never counts as ahead.

Matching: token-matched runs evaluate at the same steps, so points pair exactly by tokens seen.
Otherwise the AR curve (mean and stderr) is interpolated linearly in tokens at each DLM point
inside the AR curve's range; DLM points outside it are not compared.
"""
from __future__ import annotations

import dataclasses
import math

from dlmscale.analysis import labels as fmt
from dlmscale.errors import DlmscaleError

Z = 2.0  # combined standard errors a lead must exceed to count
# Metrics (the last part of a column name) where a higher value is better; the rest (validation
# loss, NLL(correct), perplexity) are better lower.
HIGHER_IS_BETTER = frozenset({"acc", "acc_norm", "delta_nll_mean", "delta_nll_min"})


@dataclasses.dataclass(frozen=True)
class Point:
  tokens: float
  mean: float
  stderr: float
  epochs: float | None = None


def higher_is_better(metric: str) -> bool:
  """Direction of a metric column: 'val_mean' or '<task>/<metric>'."""
  return metric.rsplit("/", 1)[-1] in HIGHER_IS_BETTER


def _interpolate(points: list[Point], tokens: float) -> Point | None:
  for a, b in zip(points, points[1:]):
    if a.tokens <= tokens <= b.tokens:
      w = 0.0 if b.tokens == a.tokens else (tokens - a.tokens) / (b.tokens - a.tokens)
      return Point(tokens, a.mean + w * (b.mean - a.mean), a.stderr + w * (b.stderr - a.stderr))
  return None


def match_points(ar: list[Point], dlm: list[Point]) -> list[tuple[Point, Point]]:
  """(AR, DLM) pairs at the DLM's tokens: exact where the AR evaluated there, else interpolated."""
  ar = sorted(ar, key=lambda p: p.tokens)
  exact = {p.tokens: p for p in ar}
  pairs = []
  for d in sorted(dlm, key=lambda p: p.tokens):
    a = exact.get(d.tokens) or _interpolate(ar, d.tokens)
    if a is not None:
      pairs.append((a, d))
  return pairs


def detect_crossover(ar_points, dlm_points, higher_is_better: bool, *, z: float = Z) -> dict:
  """The crossover of a DLM curve over an AR curve of one metric (see the module docstring).

  Points are `Point`s or (tokens, mean, stderr[, epochs]) tuples. Returns {crossed, tokens:
  [lo, hi] | None, epochs: [lo, hi] | None, index (of the pair) | None, compared (pairs),
  within_tokens, within_epochs (the last compared point), text}.
  """
  ar = [p if isinstance(p, Point) else Point(*p) for p in ar_points]
  dlm = [p if isinstance(p, Point) else Point(*p) for p in dlm_points]
  pairs = match_points(ar, dlm)
  if not pairs:
    raise DlmscaleError("no AR and DLM evaluation points at common tokens seen: the runs "
                        "cannot be compared")
  sign = 1.0 if higher_is_better else -1.0

  def ahead(a: Point, d: Point) -> bool:
    se = math.sqrt(a.stderr ** 2 + d.stderr ** 2)
    return math.isfinite(se) and sign * (d.mean - a.mean) > z * se

  index = None
  for i in range(len(pairs) - 1, -1, -1):  # walk back from the end while the DLM stays ahead
    if not ahead(*pairs[i]):
      break
    index = i
  last = pairs[-1][1]
  out = {"crossed": index is not None, "tokens": None, "epochs": None, "index": index,
         "compared": len(pairs), "within_tokens": last.tokens, "within_epochs": last.epochs}
  within = f"T = {fmt.tokens(last.tokens)} tokens ({fmt.epochs(last.epochs)} epochs)"
  if index is None:
    out["text"] = f"no crossover within {within}"
    return out
  here = pairs[index][1]
  before = pairs[index - 1][1] if index else Point(0.0, math.nan, math.nan, 0.0)
  out["tokens"] = [before.tokens, here.tokens]
  out["epochs"] = [before.epochs, here.epochs]
  if index == 0:
    out["text"] = (f"DLM ahead by > {z:g} stderr at every evaluation: crossover before the first "
                   f"(0-{fmt.tokens(here.tokens)} tokens, epochs 0-{fmt.epochs(here.epochs)}), "
                   f"to {within}")
    return out
  out["text"] = (f"crossover between {fmt.tokens(before.tokens)} and "
                 f"{fmt.tokens(here.tokens)} tokens (epochs {fmt.epochs(before.epochs)}-"
                 f"{fmt.epochs(here.epochs)}); DLM ahead by > {z:g} stderr at each of the last "
                 f"{len(pairs) - index} evaluation(s), to {within}")
  return out
