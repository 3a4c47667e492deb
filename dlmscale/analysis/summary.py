"""The summary of a set of runs: per budget the final numbers and crossovers, the data potential,
as a JSON-ready dict and as Markdown text to paste into a README."""
from __future__ import annotations

from dlmscale.analysis import labels as fmt
from dlmscale.analysis.crossover import HIGHER_IS_BETTER, Z
from dlmscale.analysis.groups import (Group, available_metrics, group_crossovers, groups,
                                      metric_columns)
from dlmscale.analysis.potential import fit_data_potential, potential_ratio
from dlmscale.analysis.runs import Series, finite
from dlmscale.errors import DlmscaleError


def _status(s: Series) -> str:
  if s.finished:
    return "finished"
  return f"running (step {s.progress['step']}/{s.num_steps})"


def run_status(s: Series) -> dict:
  return {"run": s.run, "objective": s.objective, "kind": s.kind, "label": s.label,
          "path": s.path, "finished": s.finished, "status": _status(s),
          "step": s.progress["step"], "num_steps": s.num_steps,
          "tokens_seen": s.progress["tokens_seen"], "epochs": s.progress["epochs"],
          "train_loss": s.progress["train_loss"], "eval_points": len(s.points),
          "stream_fingerprint": s.stream_fingerprint}


def _last_point(s: Series) -> dict | None:
  """The latest evaluation with a validation figure (a finished run's final one)."""
  with_val = [p for p in s.points if finite(p.get("val_mean"))]
  return with_val[-1] if with_val else (s.points[-1] if s.points else None)


def _group_dict(g: Group, metrics: list[str]) -> dict:
  final = []
  for s in g.series:
    p = _last_point(s) or {}
    final.append({"run": s.run, "objective": s.objective, "label": s.label, "kind": s.kind,
                  "finished": s.finished, "status": _status(s), **p})
  return {"model": g.model, "unique_tokens": g.unique_tokens, "total_tokens": g.total_tokens,
          "epochs": g.total_tokens / g.unique_tokens,
          "data_sources": g.series[0].config["data"].get("sources"), "final": final,
          "crossovers": {m: group_crossovers(g, m) for m in metrics}}


# ---- data potential over runs --------------------------------------------------------------------

def data_potential(series: list[Series], level: float = 0.95) -> dict:
  """R* per objective (and model, corpus) from finished runs' final validation losses, and
  R*_DLM / R*_AR for each DLM objective against plain AR of the same model and corpus."""
  by_key: dict[tuple, list[tuple]] = {}
  for s in series:
    p = _last_point(s)
    if not s.finished or not p or not finite(p.get("val_mean")):
      continue
    d = s.config["data"]
    key = (s.label, s.kind, s.model_label, str(d.get("sources")), int(d["seq_len"]))
    by_key.setdefault(key, []).append((int(d["unique_tokens"]), p["tokens_seen"], p["val_mean"],
                                       p.get("val_stderr")))
  fits = []
  for (label, kind, model, sources, _), pts in sorted(by_key.items()):
    entry = {"objective": label, "kind": kind, "model": model, "data_sources": sources,
             "runs": len(pts), "budgets": sorted({u for u, *_ in pts})}
    stderr = [se for *_, se in pts]
    try:
      entry.update(fit_data_potential([u for u, *_ in pts], [t for _, t, _, _ in pts],
                                      [y for _, _, y, _ in pts],
                                      stderr if all(finite(x) for x in stderr) else None,
                                      level=level))
    except DlmscaleError as e:
      entry["error"] = str(e)
    fits.append(entry)
  ratios = []
  for ar in (f for f in fits if f["objective"] == "ar" and "r_star" in f):
    for dlm in (f for f in fits if f["kind"] == "dlm" and "r_star" in f):
      if (dlm["model"], dlm["data_sources"]) == (ar["model"], ar["data_sources"]):
        ratios.append({"dlm": dlm["objective"], "ar": ar["objective"], "model": ar["model"],
                       "data_sources": ar["data_sources"], **potential_ratio(dlm, ar)})
  return {"level": level, "fits": fits, "ratios": ratios}


# ---- text ----------------------------------------------------------------------------------------

def _metric_title(metric: str) -> str:
  if metric == "val":
    return "validation loss (lower is better)"
  task, _, m = metric.rpartition("/")
  direction = "higher" if m in HIGHER_IS_BETTER else "lower"
  return f"{task} {m} ({direction} is better)"


def _group_text(g: dict, task_metrics: list[str], shown: list[str]) -> list[str]:
  head = (f"### U = {fmt.tokens(g['unique_tokens'])} unique tokens, T = "
          f"{fmt.tokens(g['total_tokens'])} ({fmt.epochs(g['epochs'])} epochs); model "
          f"{g['model']}; data {g['data_sources']}")
  cols = ["run", "objective", "status", "epochs", "tokens seen", "val (nats/token)"]
  cols += [m.replace("/", " ") for m in task_metrics]
  lines = ["", head, "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
  for f in g["final"]:
    if "step" not in f:
      cells = [f["run"], f["label"], f["status"]] + ["-"] * (len(cols) - 3)
    else:
      val = fmt.mean_se(f.get("val_mean"), f.get("val_stderr"))
      if val != "-":
        val += f" ({f.get('val_kind', '?').upper()})"
      cells = [f["run"], f["label"], f["status"], f"{f['epochs']:.2f}", f"{f['tokens_seen']:,}",
               val] + [fmt.mean_se(f.get(m), f.get(metric_columns(m)[1]), 3)
                       for m in task_metrics]
    lines.append("| " + " | ".join(cells) + " |")
  for metric in shown:
    for c in g["crossovers"].get(metric, []):
      lines.append(f"- Crossover, {_metric_title(metric)}, {c['dlm_label']} vs {c['ar_label']}: "
                   f"{c['text']}")
  return lines


def _potential_text(p: dict) -> list[str]:
  if not p["fits"]:
    return []
  pct = f"{100 * p['level']:g}%"
  if all("error" in f for f in p["fits"]):
    most = max(f["runs"] for f in p["fits"])
    return ["", f"Data potential R*: not fitted (the fit needs the final losses of at least 5 "
            f"finished (U, T) budgets of one objective; the most here is {most})."]
  lines = ["", f"### Data potential R* (Muennighoff et al. 2023 fit of final validation loss; "
           f"{pct} interval)", "", "| objective | model | runs | R* | interval | note |",
           "|---|---|---|---|---|---|"]
  for f in p["fits"]:
    if "error" in f:
      lines.append(f"| {f['objective']} | {f['model']} | {f['runs']} | - | - | {f['error']} |")
      continue
    lo, hi = f["r_star_interval"]
    lines.append(f"| {f['objective']} | {f['model']} | {f['runs']} | {f['r_star']:.3g} | "
                 f"[{lo:.3g}, {hi:.3g}] | {f['note'] or 'ok'} |")
  for r in p["ratios"]:
    lo, hi = r["interval"]
    flag = "" if r["determined"] else " (undetermined: see the fits' notes)"
    lines.append(f"- R*_{r['dlm']} / R*_{r['ar']} ({r['model']}): {r['ratio']:.3g} "
                 f"[{lo:.3g}, {hi:.3g}]{flag}")
  return lines


def summarize(series: list[Series], metric: str = "val", problems=()) -> dict:
  """The summary dict (runs, groups with crossovers, data potential) and its Markdown text."""
  metrics = available_metrics(series)
  task_acc = [m for m in metrics if m.endswith("/acc")]
  shown = [metric] + [m for m in task_acc if m != metric]
  group_dicts = [_group_dict(g, metrics) for g in groups(series)]
  potential = data_potential(series)
  finished = sum(s.finished for s in series)
  runs = sorted({s.run for s in series})
  lines = [f"## {len(series)} objectives in {len(runs)} runs ({finished} finished, "
           f"{len(series) - finished} running)"]
  lines += [f"- NOT token-matched (compared anyway, --force): {p}" for p in problems]
  for g in group_dicts:
    lines += _group_text(g, task_acc, shown)
  lines += _potential_text(potential)
  lines += ["", "Validation: AR exact NLL, DLM ELBO bound (an upper bound on its NLL), nats per "
            "token on held-out sequences; ± one standard error. A crossover counts when the DLM "
            f"leads by more than {Z:g} combined standard errors at that evaluation "
            "and every later one."]
  return {"metric": metric, "metrics": metrics, "runs": [run_status(s) for s in series],
          "groups": group_dicts, "data_potential": potential,
          "token_match_problems": list(problems), "text": "\n".join(lines)}
