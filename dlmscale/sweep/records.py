"""A sweep's bookkeeping: each run's status from its workdir, its command, its record, and
<workdir>/sweep.json; the dry-run listing."""
from __future__ import annotations

import json
import shlex
import sys
from typing import Sequence, TextIO

from etils import epath

from dlmscale.run_files import write_text_atomic
from dlmscale.sweep.plan import Run

RESULTS_FILE = "results.json"
SUMMARY_FILE = "sweep.json"


def run_status(workdir: str) -> str:
  """finished (results.json), interrupted (a checkpoint, no results.json: rerunning resumes)
  or pending."""
  path = epath.Path(workdir)
  if (path / RESULTS_FILE).exists():
    return "finished"
  if path.is_dir():
    for checkpoints in path.glob("*/checkpoints"):
      if any(p.name.isdigit() for p in checkpoints.iterdir()):
        return "interrupted"
  return "pending"


def run_command(run: Run, extra_args: Sequence[str] = ()) -> list[str]:
  """The local command of a run (started again, it resumes)."""
  return [sys.executable, "-m", "dlmscale.main", f"--config={run.config_spec}",
          f"--workdir={run.workdir}", *extra_args]


def run_record(run: Run, command: Sequence[str], status: str | None = None) -> dict:
  return {"name": run.name, "arg": run.arg, "config_spec": run.config_spec,
          "workdir": run.workdir, "command": list(command),
          "status": status or run_status(run.workdir), "unique_tokens": run.unique_tokens,
          "total_tokens": run.total_tokens, "epochs": run.epochs}


def write_summary(workdir: str, header: dict, records: list[dict]) -> None:
  """<workdir>/sweep.json (local or gs://), replaced atomically (a kill never leaves half a
  file)."""
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  write_text_atomic(root / SUMMARY_FILE, json.dumps({**header, "runs": records}, indent=1) + "\n")


def load_summary(workdir: str) -> dict:
  """sweep.json of a sweep's workdir: study, scale, launcher and one record per run."""
  return json.loads((epath.Path(workdir) / SUMMARY_FILE).read_text())


def _describe(record: dict) -> str:
  return (f"{record['name']}  {record['status']}  U={record['unique_tokens']:,} "
          f"T={record['total_tokens']:,} epochs={record['epochs']:.2f}")


def status_counts(records: list[dict]) -> str:
  statuses = [r["status"] for r in records]
  return ", ".join(f"{statuses.count(s)} {s}" for s in ("pending", "interrupted", "finished"))


def print_plan(title: str, records: list[dict], out: TextIO, setup=(), teardown=()) -> None:
  """The dry-run listing: per run its status, U, T, epochs, workdir and command."""
  print(title, file=out)
  if setup:
    print("setup:", file=out)
    for cmd in setup:
      print(f"  $ {shlex.join(cmd)}", file=out)
  for r in records:
    print(_describe(r), file=out)
    print(f"  workdir {r['workdir']}", file=out)
    if r["command"]:  # a finished run gets no cloud command
      print(f"  $ {shlex.join(r['command'])}", file=out)
  if teardown:
    print("teardown:", file=out)
    for cmd in teardown:
      print(f"  $ {shlex.join(cmd)}", file=out)
