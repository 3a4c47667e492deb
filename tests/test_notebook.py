"""notebooks/small_scale_replication.ipynb, executed headless with a trimmed sweep: it must
produce the analysis table and plots holding the runs' own numbers, not merely run."""
import csv
import json
import os
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("matplotlib")

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "small_scale_replication.ipynb"


def _trimmed(workdir: Path, eval_tasks: str):
  nb = nbformat.read(NOTEBOOK, as_version=4)
  [params] = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
  params.source = (f'STUDY = "tests/configs/tiny_study.py"\nSCALE = "cpu"\n'
                   f'WORKDIR = {str(workdir)!r}\nEVAL_TASKS = {eval_tasks!r}\nEVAL_LIMIT = 8\n'
                   "PARALLEL = 1\n")
  return nb


def _text(nb) -> str:
  return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                   for o in c.get("outputs", []) if o.get("output_type") == "stream")


def test_notebook_runs_the_sweep_and_shows_the_analysis(tmp_path):
  workdir = tmp_path / "sweep"
  nb = _trimmed(workdir, eval_tasks="heldout_c16_n8")  # the tiny runs have 32-token rows
  nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": str(REPO)}}).execute()
  text = _text(nb)
  assert "dlmscale is already installed" in text  # the install cell was skipped
  out = workdir / "analysis"
  with open(out / "runs.csv") as f:
    final = {(r["run"], r["objective"]): r for r in csv.DictReader(f) if r["final"] == "true"}
  runs = sorted(p.name for p in workdir.iterdir() if (p / "results.json").exists())
  assert len(runs) == 4
  for run in runs:
    [result] = json.loads((workdir / run / "results.json").read_text())
    row = final[(run, result["objective"])]
    assert float(row["val_mean"]) == result["val_mean"]
    assert int(row["tokens_seen"]) == result["tokens_seen"]
    # The downstream cell scored each run's held-out multiple-choice task.
    evaluated = json.loads((workdir / run / "eval.json").read_text())[0]
    assert evaluated["tasks"]["heldout_c16_n8"]["num_examples"] == 8
  summary = json.loads((out / "summary.json").read_text())
  assert "Crossover" in summary["text"] and summary["text"].splitlines()[0] in text
  pngs = sorted(p.name for p in out.glob("*.png"))
  assert "validation_loss.png" in pngs and os.path.getsize(out / "validation_loss.png") > 10_000
  shown = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
           if "image/png" in o.get("data", {})]
  assert len(shown) == len(pngs)
