"""The one entry point: `analyze(run_dirs, out)` collects runs and writes the table, summary and
figures (runs.csv, runs.json, summary.json, summary.md, *.png) under `out`."""
from __future__ import annotations

import csv
import io
import json
import math

from etils import epath

from dlmscale.analysis import plots as plots_lib
from dlmscale.analysis.groups import check_metric
from dlmscale.analysis.runs import BASE_COLUMNS, check_token_matched, collect, rows
from dlmscale.analysis.summary import summarize


def _json_safe(x):
  """NaN and inf (a stderr of one example) become null: runs.json stays strict JSON."""
  if isinstance(x, float) and not math.isfinite(x):
    return None
  if isinstance(x, dict):
    return {k: _json_safe(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_json_safe(v) for v in x]
  return x


def _csv_cell(x) -> str:
  if x is None:
    return ""
  if isinstance(x, bool):
    return "true" if x else "false"
  return repr(x) if isinstance(x, float) else str(x)  # repr: floats read back exactly


def table_columns(table: list[dict]) -> list[str]:
  """BASE_COLUMNS, then every task metric column present, sorted."""
  extra = sorted({k for row in table for k in row} - set(BASE_COLUMNS))
  return list(BASE_COLUMNS) + extra


def write_table(table: list[dict], out: epath.Path) -> None:
  columns = table_columns(table)
  buffer = io.StringIO()
  writer = csv.writer(buffer, lineterminator="\n")
  writer.writerow(columns)
  for row in table:
    writer.writerow([_csv_cell(row.get(c)) for c in columns])
  (out / "runs.csv").write_text(buffer.getvalue())
  (out / "runs.json").write_text(json.dumps(_json_safe(table), indent=1, allow_nan=False) + "\n")


def analyze(run_dirs: list[str], out: str, *, metric: str = "val", force: bool = False,
            plots: bool = True) -> dict:
  """Collects every run at or below `run_dirs` (run workdirs or sweep directories, finished or
  still training) and writes under `out`: runs.csv / runs.json (one row per run, objective and
  evaluation point), summary.json (per budget the final numbers and the crossover of each
  metric, the data potential R* per objective), summary.md (the same as Markdown) and, with
  `plots`, PNG figures. `metric` ('val' or '<task>/<metric>') leads the text summary. Runs with
  the same data config but different stream or data fingerprints are refused (DlmscaleError)
  unless `force`. Returns the summary (its 'text' is the Markdown)."""
  series = collect(list(run_dirs))
  problems = check_token_matched(series, force)
  check_metric(series, metric)
  if plots:
    plots_lib.require_matplotlib()  # fail on a missing extra before writing anything
  out_dir = epath.Path(out)
  out_dir.mkdir(parents=True, exist_ok=True)
  write_table(rows(series), out_dir)
  summary = summarize(series, metric, problems)
  summary["plots"] = plots_lib.plot_all(series, out) if plots else []
  summary["files"] = [str(out_dir / f) for f in ("runs.csv", "runs.json", "summary.json",
                                                  "summary.md")] + summary["plots"]
  (out_dir / "summary.md").write_text(summary["text"] + "\n")
  (out_dir / "summary.json").write_text(
      json.dumps(_json_safe(summary), indent=1, allow_nan=False) + "\n")
  return summary
