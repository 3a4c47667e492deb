"""Budget groups: the runs that share a token stream and a model, compared with each other.

Runs with the same data config (unique budget U, total T, sources, sequence length, batch) see
the same tokens (DESIGN.md's invariant); with the same model too, their AR and DLM objectives are
directly comparable, and each AR-kind series (plain AR, input-mask and dropout variants) is
compared with each DLM series of its group.
"""
from __future__ import annotations

import dataclasses

from dlmscale.analysis import crossover
from dlmscale.analysis.runs import Series, finite
from dlmscale.errors import DlmscaleError


@dataclasses.dataclass
class Group:
  model: str
  unique_tokens: int
  total_tokens: int
  series: list[Series]

  @property
  def ar(self) -> list[Series]:
    return [s for s in self.series if s.kind == "ar"]

  @property
  def dlm(self) -> list[Series]:
    return [s for s in self.series if s.kind == "dlm"]


def groups(series: list[Series]) -> list[Group]:
  """Series grouped by (model, stream), ordered by model then unique budget."""
  by_key: dict[tuple, Group] = {}
  for s in series:
    d = s.config["data"]
    key = (s.model_key, s.stream_key)
    if key not in by_key:
      by_key[key] = Group(s.model_label, int(d["unique_tokens"]), int(d["total_tokens"]), [])
    by_key[key].series.append(s)
  for g in by_key.values():  # plain AR and DLM first, then the noise variants by rate
    g.series.sort(key=lambda s: (s.noise_rate is not None, s.kind, s.objective,
                                 s.noise_rate or 0.0, s.run))
  return sorted(by_key.values(), key=lambda g: (g.model, g.unique_tokens, g.total_tokens))


def metric_columns(metric: str) -> tuple[str, str]:
  """'val' -> the validation mean/stderr columns; '<task>/<m>' -> that metric and its stderr."""
  if metric == "val":
    return "val_mean", "val_stderr"
  return metric, f"{metric}_stderr"


def available_metrics(series: list[Series]) -> list[str]:
  """'val' and every task metric that has a stderr (acc, acc_norm, nll_correct, ...)."""
  names = {k for s in series for p in s.points for k in p
           if "/" in k and not k.endswith("_stderr") and f"{k}_stderr" in p}
  return ["val"] + sorted(names)


def curve(s: Series, metric: str) -> list[crossover.Point]:
  mean, se = metric_columns(metric)
  return [crossover.Point(p["tokens_seen"], p[mean], p.get(se, float("nan")), p["epochs"])
          for p in s.points if finite(p.get(mean))]


def check_metric(series: list[Series], metric: str) -> None:
  names = available_metrics(series)
  if metric not in names:
    raise DlmscaleError(f"metric {metric!r} is in no run: choose one of {', '.join(names)}")


def group_crossovers(g: Group, metric: str) -> list[dict]:
  """{ar, dlm, metric, higher_is_better, **detect_crossover} for each AR x DLM pair with points."""
  out = []
  for a in g.ar:
    for d in g.dlm:
      ar_curve, dlm_curve = curve(a, metric), curve(d, metric)
      if not ar_curve or not dlm_curve:
        continue
      better = crossover.higher_is_better(metric_columns(metric)[0])
      try:
        found = crossover.detect_crossover(ar_curve, dlm_curve, better)
      except DlmscaleError:
        continue  # no common tokens yet (a run that has barely started)
      out.append({"ar": f"{a.run}/{a.objective}", "ar_label": a.label,
                  "dlm": f"{d.run}/{d.objective}", "dlm_label": d.label, "metric": metric,
                  "higher_is_better": better, **found})
  return out
