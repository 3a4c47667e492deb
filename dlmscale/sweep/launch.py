"""The sweep's entry point: plan the study, then launch locally or print (and with `yes` run) the
Cloud TPU VM / xpk commands."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from typing import Sequence, TextIO

from dlmscale import launchers, storage
from dlmscale.errors import DlmscaleError
from dlmscale.sweep.local import run_local
from dlmscale.sweep.plan import SweepFailed, plan_sweep
from dlmscale.sweep.records import (print_plan, run_command, run_record, run_status,
                                    status_counts, write_summary)

LAUNCHERS = ("local", "tpu_vm", "xpk")


def run_sweep(study: str, scale: str, workdir: str, *, dry_run: bool = False,
              launcher: str = "local", parallel: int = 1, yes: bool = False,
              launcher_options: dict | None = None, extra_args: Sequence[str] = (),
              out: TextIO | None = None) -> list[dict]:
  """Plans the study's runs at `scale` into workdir and launches them; one record per run
  (name, config_spec, workdir, command, status, unique_tokens, total_tokens, epochs).

  dry_run: print the plan, launch and write nothing. launcher local: subprocesses here (see
  run_local). tpu_vm / xpk: print the cloud commands (dlmscale.launchers), and run them only
  with `yes`. launcher_options: the launcher's options, plus check_data (default: True for
  local only, since cloud hosts read their own copy of the corpus).
  """
  out = out or sys.stdout
  if launcher not in LAUNCHERS:
    raise DlmscaleError(f"unknown launcher {launcher!r}: use one of {', '.join(LAUNCHERS)}")
  if parallel < 1:
    raise DlmscaleError(f"parallel must be >= 1, got {parallel}")
  storage.check_location(workdir)  # local, or gs:// with the gcs extra
  options = dict(launcher_options or {})
  check_data = options.pop("check_data", launcher == "local")
  if launcher == "local" and options:
    raise DlmscaleError(f"launch options {', '.join(sorted(options))} are for tpu_vm or xpk, "
                        "not the local launcher")
  runs = plan_sweep(study, scale, workdir, check_data=check_data)
  header = {"study": os.path.abspath(study), "scale": scale}
  title = (f"sweep {study} at scale {scale}: {len(runs)} runs in {workdir} "
           f"(launcher {launcher})")
  if launcher == "local":
    if not dry_run:
      return run_local(runs, workdir, parallel=parallel, extra_args=extra_args, header=header,
                       out=out)
    records = [run_record(r, run_command(r, extra_args)) for r in runs]
    print_plan(title, records, out)
    print(f"dry run: nothing launched ({status_counts(records)})", file=out)
    return records
  return _run_cloud(runs, launcher, options, workdir, header, title, dry_run=dry_run, yes=yes,
                    extra_args=extra_args, out=out)


def _run_cloud(runs, launcher, options, workdir, header, title, *, dry_run, yes, extra_args,
               out) -> list[dict]:
  status = {r.name: run_status(r.workdir) for r in runs}
  todo = [r for r in runs if status[r.name] != "finished"]
  launch = launchers.plan(launcher, todo, options, extra_args)
  if not todo:  # nothing to create a slice or build an image for
    launch = launchers.LaunchPlan([], {}, [])
  records = [run_record(r, launch.runs.get(r.name, []), status[r.name]) for r in runs]
  print_plan(title, records, out, launch.setup, launch.teardown)
  if dry_run or not yes:
    print(f"{'dry run' if dry_run else 'not run (pass yes / --yes to run them)'}: nothing "
          f"launched ({status_counts(records)})", file=out)
    return records
  # Commands that build the image read the checkout they run from.
  cwd = launchers.checkout_root(header["study"])
  for cmd in launch.commands():
    print(f"$ {shlex.join(cmd)}", file=out, flush=True)
    code = subprocess.run(cmd, cwd=cwd, check=False).returncode
    if code:
      raise SweepFailed(f"{cmd[0]} exited with {code} running: {shlex.join(cmd)[:200]}")
  for r in records:
    r["status"] = "launched" if r["command"] else r["status"]
  if storage.is_remote(workdir) or os.path.isdir(workdir):  # reachable from here: leave the summary
    write_summary(workdir, dict(header, workdir=workdir, launcher=launcher), records)
  return records
