"""PNG figures of a set of runs: AR solid, DLM dashed, one colour per data budget.

matplotlib is optional (`pip install 'dlmscale[plot]'`) and imported only when a figure is drawn.
Figures are 800 px wide (8 in at 100 dpi), the width of a README image, and are drawn on
matplotlib.figure.Figure objects (no pyplot state, no global backend change).
"""
from __future__ import annotations

import io
import math

import numpy as np
from etils import epath

from dlmscale.analysis import labels as fmt
from dlmscale.analysis.groups import curve, groups
from dlmscale.analysis.runs import Series, finite
from dlmscale.optional import require

WIDTH_IN, DPI, PANEL_H_IN = 8.0, 100, 3.1
STYLE = {"ar": "-", "dlm": "--"}
KIND_NAME = {"ar": "AR", "dlm": "DLM"}
NOISE_NAME = {"ar_input_mask": "AR input mask", "ar_dropout": "AR dropout"}
VAL_LABEL = "validation loss (nats/token)"
MAX_TOTALS = 4  # lines of different total T in one final-vs-unique panel
# Chance accuracy of the multiple-choice tasks (PAPER.md; SciQ and OpenBookQA have 4 options).
CHANCE = {"hellaswag": 0.25, "mmlu": 0.25, "arc_easy": 0.25, "arc_challenge": 0.25,
          "openbookqa": 0.25, "sciq": 0.25, "piqa": 0.5, "winogrande": 0.5}
METRIC_LABEL = {"acc": "accuracy", "acc_norm": "accuracy (length-normalised)",
                "nll_correct": "NLL(correct) (nats)", "delta_nll_mean": "ΔNLL mean (nats)",
                "delta_nll_min": "ΔNLL min (nats)"}


def _name(kind: str, objective: str, rate: float | None = None) -> str:
  """'AR', 'DLM', 'AR input mask 0.3', 'DLM (my_loss)': legend names."""
  if rate is not None:
    return f"{NOISE_NAME.get(objective, objective)} {rate:g}"
  plain = {"ar": "ar", "dlm": "mdm"}[kind] == objective
  return KIND_NAME[kind] + ("" if plain else f" ({objective})")


def _mpl():
  figure = require("matplotlib.figure", "plot", "plotting")
  return figure, require("matplotlib.ticker", "plot", "plotting"), require(
      "matplotlib.lines", "plot", "plotting")


def _figure(panels: int, title: str, ncols: int = 2):
  figure, _, _ = _mpl()
  ncols = min(ncols, panels)
  nrows = math.ceil(panels / ncols)
  fig = figure.Figure(figsize=(WIDTH_IN, 0.7 + PANEL_H_IN * nrows), dpi=DPI, layout="constrained")
  axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
  for ax in axes[panels:]:
    ax.set_visible(False)
  fig.suptitle(title, fontsize=12)
  return fig, list(axes[:panels])


def _save(fig, out: epath.Path, name: str) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format="png")
  path = out / name
  path.write_bytes(buffer.getvalue())
  return str(path)


def _token_axis(ax, label: str = "tokens seen") -> None:
  _, ticker, _ = _mpl()
  ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda x, _: fmt.tokens(x) if x else "0"))
  ax.set_xlabel(label)
  ax.grid(alpha=0.3)


def _data_key(s: Series) -> tuple:
  d = s.config["data"]
  return int(d["unique_tokens"]), int(d["total_tokens"]), str(d.get("sources"))


def _colours(series: list[Series]) -> dict[tuple, tuple[str, str]]:
  """(colour, label) per data budget, the same in every figure of one analysis."""
  keys = sorted({_data_key(s) for s in series})
  many_sources = len({k[2] for k in keys}) > 1
  return {k: (f"C{i % 10}", fmt.budget(k[0], k[1]) + (f" {k[2]}" if many_sources else ""))
          for i, k in enumerate(keys)}


def _legend(ax, colours: dict, keys, kinds, extra=()) -> None:
  """Colour = budget, line style = AR/DLM: one entry each instead of one per line."""
  _, _, lines = _mpl()
  handles = [lines.Line2D([], [], color=colours[k][0], lw=2, label=colours[k][1])
             for k in sorted(set(keys))]
  handles += [lines.Line2D([], [], color="0.3", ls=STYLE[k], label=KIND_NAME[k])
              for k in ("ar", "dlm") if k in kinds]
  ax.legend(handles=handles + list(extra), fontsize=7, loc="best", framealpha=0.8)


def _draw(ax, s: Series, metric: str, colour: str, style: str, label: str | None = None):
  points = curve(s, metric)
  if not points:
    return False
  x = [p.tokens for p in points]
  y = [p.mean for p in points]
  ax.plot(x, y, style, color=colour, lw=1.6, marker="o", ms=2.5, label=label)
  lo = [p.mean - p.stderr if finite(p.stderr) else p.mean for p in points]
  hi = [p.mean + p.stderr if finite(p.stderr) else p.mean for p in points]
  ax.fill_between(x, lo, hi, color=colour, alpha=0.15, lw=0)
  return True


def _by_model(series: list[Series]) -> dict[str, list[Series]]:
  out: dict[str, list[Series]] = {}
  for s in series:
    out.setdefault(s.model_label, []).append(s)
  return out


def _curves_panel(ax, series, metric, colours, ylabel, title, task=None) -> bool:
  drawn = [s for s in series
           if _draw(ax, s, metric, colours[_data_key(s)][0], STYLE[s.kind])]
  if not drawn:
    ax.set_visible(False)
    return False
  extra = []
  if task and metric.endswith(("/acc", "/acc_norm")) and _chance(task) is not None:
    extra = [ax.axhline(_chance(task), color="0.5", ls=":", lw=1, label="chance")]
  _token_axis(ax)
  ax.set_ylabel(ylabel)
  ax.set_title(title, fontsize=10)
  _legend(ax, colours, [_data_key(s) for s in drawn], {s.kind for s in drawn}, extra)
  return True


def _chance(task: str) -> float | None:
  return CHANCE.get("mmlu" if task.startswith("mmlu_") else task)


def _tasks(series: list[Series], metric: str) -> list[str]:
  return sorted({k.split("/")[0] for s in series for p in s.points for k in p
                 if k.endswith("/" + metric)})


def validation_curves(series: list[Series], out: epath.Path, colours) -> list[str]:
  """(a) validation loss vs tokens seen, plain AR and DLM, one panel per model."""
  plain = [s for s in series if s.noise_rate is None]
  models = _by_model(plain)
  fig, axes = _figure(len(models), "Validation loss vs tokens seen "
                      "(AR: exact NLL, DLM: ELBO bound; ±1 stderr)", ncols=1 if len(models) < 3
                      else 2)
  drawn = [_curves_panel(ax, ss, "val", colours, VAL_LABEL, model)
           for ax, (model, ss) in zip(axes, models.items())]
  return [_save(fig, out, "validation_loss.png")] if any(drawn) else []


def accuracy_curves(series: list[Series], out: epath.Path, colours) -> list[str]:
  """(b) accuracy (and length-normalised accuracy) vs tokens seen, one figure per task."""
  plain = [s for s in series if s.noise_rate is None]
  paths = []
  for task in _tasks(plain, "acc"):
    metrics = [m for m in ("acc", "acc_norm") if task in _tasks(plain, m)]
    models = _by_model(plain)
    fig, axes = _figure(len(models) * len(metrics), f"{task}: accuracy vs tokens seen (±1 stderr)",
                        ncols=len(metrics))
    panels = [(model, ss, m) for model, ss in models.items() for m in metrics]
    drawn = [_curves_panel(ax, ss, f"{task}/{m}", colours, METRIC_LABEL[m], f"{model}: {m}", task)
             for ax, (model, ss, m) in zip(axes, panels)]
    if any(drawn):
      paths.append(_save(fig, out, f"accuracy_{task}.png"))
  return paths


def _final_points(series: list[Series], metric: str):
  """(U, T, Point) of each finished series' final evaluation of `metric`, by U."""
  out = []
  for s in series:
    if not s.finished:
      continue
    points = curve(s, metric)
    if points:
      d = s.config["data"]
      out.append((int(d["unique_tokens"]), int(d["total_tokens"]), points[-1]))
  return sorted(out, key=lambda x: x[0])


def _spaced(values: list[float], min_ratio: float = 1.6) -> list[bool]:
  """Which of the sorted values get a tick label on a log axis: labels of values closer than
  min_ratio to the last labelled one would overlap at README size."""
  shown, last = [], None
  for v in values:
    keep = last is None or v / last >= min_ratio
    shown.append(keep)
    last = v if keep else last
  return shown


def final_vs_unique(series: list[Series], out: epath.Path) -> list[str]:
  """(c) the final metric vs the unique budget (the paper's Figure A): x = unique tokens (log),
  epochs on the top axis when every run has the same total T; one colour per model and T."""
  plain = [s for s in series if s.noise_rate is None and s.finished]
  metrics = ["val"] + [f"{t}/acc" for t in _tasks(plain, "acc")]
  metrics = [m for m in metrics if any(_final_points([s], m) for s in plain)]
  if not metrics:
    return []
  fig, axes = _figure(len(metrics), "Final metric vs unique tokens (end of training; ±1 stderr)")
  # One line per objective and (model, T): a line joins budgets of one compute budget only.
  # The paper's figure has one T; of a grid of T, the (at most 4) with the most budgets.
  budgets_of: dict[int, set] = {}
  for s in plain:
    d = s.config["data"]
    budgets_of.setdefault(int(d["total_tokens"]), set()).add(int(d["unique_tokens"]))
  totals = set(sorted(budgets_of, key=lambda t: (len(budgets_of[t]), t))[-MAX_TOTALS:])
  plain = [s for s in plain if int(s.config["data"]["total_tokens"]) in totals]
  lines: dict[tuple, list[Series]] = {}
  for s in plain:
    key = (s.model_label, int(s.config["data"]["total_tokens"]))
    lines.setdefault(key + (s.kind, s.objective), []).append(s)
  colour = {k: f"C{i % 10}" for i, k in enumerate(sorted({k[:2] for k in lines}))}
  several_models = len({k[0] for k in lines}) > 1
  for ax, metric in zip(axes, metrics):
    for (model, total, kind, objective), ss in sorted(lines.items()):
      pts = _final_points(ss, metric)
      if not pts:
        continue
      name = (_name(kind, objective) + (f", {model}" if several_models else "")
              + (f", T={fmt.tokens(total)}" if len(totals) > 1 else ""))
      ax.errorbar([u for u, _, _ in pts], [p.mean for _, _, p in pts],
                  yerr=[p.stderr if finite(p.stderr) else 0 for _, _, p in pts],
                  fmt=STYLE[kind], marker="o" if kind == "ar" else "s", ms=4, capsize=2,
                  color=colour[(model, total)], label=name)
    # Ticks at the budgets themselves: log-axis minor labels would crowd a README-size panel.
    budgets = sorted({int(s.config["data"]["unique_tokens"]) for s in plain})
    _, ticker, _ = _mpl()
    ax.set_xscale("log")
    shown = _spaced(budgets)
    ax.set_xticks(budgets, [fmt.tokens(u) if keep else "" for u, keep in zip(budgets, shown)])
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("unique tokens U")
    task, _, m = metric.rpartition("/")
    ax.set_ylabel(VAL_LABEL if metric == "val" else METRIC_LABEL.get(m, m))
    ax.set_title("validation loss" if metric == "val" else f"{task} {m}", fontsize=10)
    if task and _chance(task) is not None:
      ax.axhline(_chance(task), color="0.5", ls=":", lw=1, label="chance")
    if len(totals) == 1:  # epochs = T / U: a second scale for the same points
      total = next(iter(totals))
      # matplotlib also maps 0 and the axis limits: keep the division finite there
      to_epochs = lambda u, t=total: t / np.maximum(u, 1e-300)
      top = ax.secondary_xaxis("top", functions=(to_epochs, to_epochs))
      top.set_xticks([total / u for u in budgets],
                     [fmt.epochs(total / u) if keep else "" for u, keep in zip(budgets, shown)])
      top.xaxis.set_minor_formatter(ticker.NullFormatter())
      top.set_xlabel("epochs (T / U)", fontsize=8)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best")
  return [_save(fig, out, "final_vs_unique.png")]


def noise_variants(series: list[Series], out: epath.Path) -> list[str]:
  """(d) AR with input masking or dropout at each rate beside plain AR and DLM, per budget."""
  noisy = [g for g in groups(series) if any(s.noise_rate is not None for s in g.series)]
  if not noisy:
    return []
  panels = [(g, m) for g in noisy
            for m in ["val"] + [f"{t}/acc" for t in _tasks(g.series, "acc")]]
  fig, axes = _figure(len(panels), "AR with input or parameter noise vs AR and DLM (±1 stderr)")
  colormaps = require("matplotlib", "plot", "plotting").colormaps
  # A shade per rate (darker = more noise): blues for input masking, oranges for dropout.
  cmaps = {"ar_input_mask": colormaps["Blues"], "ar_dropout": colormaps["Oranges"]}
  for ax, (g, metric) in zip(axes, panels):
    for s in sorted(g.series, key=lambda s: (s.kind, s.objective, s.noise_rate or 0)):
      if s.noise_rate is None:
        colour = "black" if s.kind == "ar" else "C3"
      else:
        cmap = cmaps.get(s.objective, colormaps["Greens"])
        colour = cmap(0.35 + 0.6 * min(max(s.noise_rate, 0.0), 1.0))
      _draw(ax, s, metric, colour, STYLE[s.kind], _name(s.kind, s.objective, s.noise_rate))
    task, _, m = metric.rpartition("/")
    _token_axis(ax)
    ax.set_ylabel(VAL_LABEL if metric == "val" else METRIC_LABEL.get(m, m))
    ax.set_title(f"{fmt.budget(g.unique_tokens, g.total_tokens)}, {g.model}"
                 + ("" if metric == "val" else f": {task}"), fontsize=10)
    ax.legend(fontsize=7, loc="best", ncols=2)
  return [_save(fig, out, "noise_variants.png")]


def likelihood_vs_accuracy(series: list[Series], out: epath.Path, colours) -> list[str]:
  """(e) per task: validation loss, accuracy, NLL(correct) and ΔNLL vs tokens seen: the
  validation loss may rise while accuracy still improves, because ΔNLL keeps widening."""
  plain = [s for s in series if s.noise_rate is None]
  paths = []
  for task in sorted(set(_tasks(plain, "nll_correct")) | set(_tasks(plain, "delta_nll_mean"))):
    titles = {"acc": "accuracy", "nll_correct": "NLL of the correct option",
              "delta_nll_mean": "ΔNLL: wrong options - correct"}
    metrics = [("val", VAL_LABEL, "validation loss")] + [
        (f"{task}/{m}", METRIC_LABEL[m], f"{task} {titles[m]}")
        for m in ("acc", "nll_correct", "delta_nll_mean") if task in _tasks(plain, m)]
    fig, axes = _figure(len(metrics), f"{task}: validation loss, accuracy, NLL(correct) and "
                        "ΔNLL vs tokens seen")
    drawn = [_curves_panel(ax, plain, m, colours, ylabel, title, task)
             for ax, (m, ylabel, title) in zip(axes, metrics)]
    if any(drawn):
      paths.append(_save(fig, out, f"likelihood_{task}.png"))
  return paths


def require_matplotlib() -> None:
  """MissingExtraError naming dlmscale[plot] when matplotlib is not installed."""
  _mpl()


def plot_all(series: list[Series], out: str) -> list[str]:
  """Every figure the runs support, written under `out`; the paths written."""
  require_matplotlib()
  out_dir = epath.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  colours = _colours(series)
  return (validation_curves(series, out_dir, colours) + accuracy_curves(series, out_dir, colours)
          + final_vs_unique(series, out_dir) + noise_variants(series, out_dir)
          + likelihood_vs_accuracy(series, out_dir, colours))
