"""Sweeps: a study's runs at one scale, planned and checked up front, then launched.

A study is a config file with `get_config(arg)` and `runs(scale) -> [arg, ...]` (optionally
`SCALES`). Each run trains into <workdir>/<name>, its name made from its arguments without
`scale=` (`unique=0.5B,objective=mdm,scale=cpu` -> `unique-0.5B_objective-mdm`). Every run's
config is built and validated, and its corpus checked, before anything is launched, so a typo in
the last run does not surface hours into the first.

Locally, runs go one after another (or `parallel` at a time) as `python -m dlmscale.main`
subprocesses. A finished run (results.json) is skipped; an interrupted one (checkpoints, no
results.json) is simply started again and resumes from its checkpoint, so a sweep killed at any
moment and started again ends with the results of one never interrupted. A failed run does not
stop the others: every failure is reported at the end and the sweep fails (SweepFailed).
SIGTERM or SIGINT is forwarded to the running runs as SIGTERM (each saves a checkpoint and exits
143) and the sweep raises SweepInterrupted (the CLI exits 143).
<workdir>/sweep.json lists the runs, their commands and statuses; <workdir>/logs/<name>.log
holds each run's output. With launcher tpu_vm or xpk the cloud commands are printed, and run
only with `yes`.
"""
from __future__ import annotations

import ctypes
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from typing import Any, Sequence, TextIO

from etils import epath

from dlmscale import config as config_lib
from dlmscale import config_files, launchers
from dlmscale.data import prepared as prepared_lib
from dlmscale.data import sources as sources_lib
from dlmscale.data.prepare import check_local, read_meta
from dlmscale.data.prepare_spec import PrepareSpec, check_same_spec
from dlmscale.errors import DlmscaleError

LAUNCHERS = ("local", "tpu_vm", "xpk")
RESULTS_FILE = "results.json"
SUMMARY_FILE = "sweep.json"
LOCK_FILE = "sweep.lock"
LOG_DIR = "logs"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 96
_PR_SET_PDEATHSIG = 1


class SweepFailed(DlmscaleError):
  """Some runs failed or stopped; the others were completed."""


class SweepInterrupted(Exception):
  """SIGTERM/SIGINT reached the sweep; its running runs saved a checkpoint."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a study: its arguments, its config file spec, where it trains, its config."""
  name: str
  arg: str
  config_spec: str
  workdir: str
  cfg: Any = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def unique_tokens(self) -> int:
    return int(self.cfg.data.unique_tokens)

  @property
  def total_tokens(self) -> int:
    return int(self.cfg.data.total_tokens)

  @property
  def epochs(self) -> float:
    return self.total_tokens / self.unique_tokens


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


# ---- planning ----------------------------------------------------------------------------------

def load_study(path: str):
  """The study module at `path` (its checkout's `configs` importable)."""
  try:
    module = config_files.load_module(path, "dlmscale_study_"
                                      + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12])
  except DlmscaleError as e:
    raise DlmscaleError(f"study {e}") from None
  if not callable(getattr(module, "runs", None)):
    raise DlmscaleError(f"study file {path!r} has no runs(): a study defines get_config(arg) and "
                        "runs(scale) -> list of run argument strings")
  return module


def study_runs(module, path: str, scale: str) -> list[str]:
  """The run argument strings of the study at `scale`."""
  scales = getattr(module, "SCALES", None)
  if scales is not None and scale not in scales:
    raise DlmscaleError(f"unknown scale {scale!r} for study {path}: use one of "
                        f"{', '.join(map(str, scales))}")
  try:
    args = module.runs(scale)
  except DlmscaleError as e:
    raise DlmscaleError(f"study {path}: runs({scale!r}): {_one_line(e)}") from None
  except Exception as e:  # a study rejects a scale however it likes
    raise DlmscaleError(f"study {path}: runs({scale!r}) failed ({type(e).__name__}: "
                        f"{_one_line(e)}): use a scale the study defines") from None
  if isinstance(args, str) or not all(isinstance(a, str) for a in args):
    raise DlmscaleError(f"study {path}: runs({scale!r}) must return a list of argument strings "
                        "such as 'unique=0.5B,objective=mdm,scale=cpu'")
  if not args:
    raise DlmscaleError(f"study {path} has no runs at scale {scale!r}")
  return list(args)


def run_name(arg: str) -> str:
  """A readable, filesystem-safe name: `key-value` pairs joined by '_', without scale=."""
  parts = []
  for item in arg.split(","):
    key, sep, value = (s.strip() for s in item.partition("="))
    if key and key != "scale":
      parts.append(f"{key}-{value}" if sep else key)
  name = _UNSAFE.sub("-", "_".join(parts)).strip(".-_") or "run"
  if len(name) > _MAX_NAME:  # keep under filesystem limits, still unique
    name = f"{name[:_MAX_NAME - 9]}-{hashlib.sha256(arg.encode()).hexdigest()[:8]}"
  return name


def _build_config(module, run: Run):
  try:
    cfg = module.get_config(run.arg) if run.arg else module.get_config()
  except DlmscaleError as e:
    raise DlmscaleError(f"run {run.name}: {_one_line(e)}") from None
  except Exception as e:
    raise DlmscaleError(f"run {run.name} ({run.arg!r}): get_config failed ({type(e).__name__}: "
                        f"{_one_line(e)}): fix the study or its runs()") from None
  try:
    config_lib.validate(cfg)
  except DlmscaleError as e:
    raise DlmscaleError(f"run {run.name}: {e}") from None
  d = cfg.data
  if not (d.unique_tokens > 0 and d.total_tokens > 0):
    raise DlmscaleError(f"run {run.name}: data.unique_tokens ({d.unique_tokens}) and "
                        f"data.total_tokens ({d.total_tokens}) must be > 0")
  return cfg


def check_corpus(run: Run) -> None:
  """The run's corpus can be read: prepared already, or every source yields a document (read
  without preparing). A missing source is a one-line error naming the run and the fix."""
  d = run.cfg.data
  try:
    spec = PrepareSpec.from_config(d)
    directory = prepared_lib.prepared_dir(d)
    check_local(directory)
    meta = read_meta(directory)
    if meta is not None:
      check_same_spec(meta, spec, directory)
      return
    for source in spec.sources:
      docs = sources_lib.iter_documents(source, sources_lib.SourceContext(spec.on_decode_error))
      try:
        first = next(iter(docs), None)
      except DlmscaleError:
        raise
      except Exception as e:  # a source's own I/O error: name it, one line
        raise DlmscaleError(f"reading source {source!r} failed ({type(e).__name__}: "
                            f"{_one_line(e)})") from None
      finally:
        getattr(docs, "close", lambda: None)()
      if first is None:
        raise DlmscaleError(f"source {source!r} has no documents; check data.sources")
  except DlmscaleError as e:
    raise DlmscaleError(f"run {run.name}: corpus not available: {_one_line(e)}") from None


def plan_sweep(study_path: str, scale: str, workdir: str, *, check_data: bool = True
               ) -> list[Run]:
  """The study's runs at `scale`, each built, validated and (with check_data) its corpus
  checked. Raises DlmscaleError (one line) on the first problem; launches and writes nothing."""
  module = load_study(study_path)
  runs, seen = [], {}
  for arg in study_runs(module, study_path, scale):
    name = run_name(arg)
    if name in seen:
      raise DlmscaleError(f"runs {seen[name]!r} and {arg!r} of {study_path} get the same name "
                          f"{name!r}: make their arguments (besides scale=) differ")
    seen[name] = arg
    spec = f"{study_path}:{arg}" if arg else study_path
    runs.append(Run(name, arg, spec, os.path.join(workdir, name)))
  runs = [dataclasses.replace(r, cfg=_build_config(module, r)) for r in runs]
  if check_data:
    checked = set()
    for run in runs:  # runs of a study mostly share one corpus: check each corpus once
      key = PrepareSpec.from_config(run.cfg.data).key() + run.cfg.data.prepared_dir
      if key not in checked:
        check_corpus(run)
        checked.add(key)
  return runs


# ---- status, records, summary ------------------------------------------------------------------

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
  """<workdir>/sweep.json, replaced atomically (a kill never leaves half a file)."""
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  tmp = root / f".{SUMMARY_FILE}.tmp"
  tmp.write_text(json.dumps({**header, "runs": records}, indent=1) + "\n")
  tmp.replace(root / SUMMARY_FILE)


def load_summary(workdir: str) -> dict:
  """sweep.json of a sweep's workdir: study, scale, launcher and one record per run."""
  return json.loads((epath.Path(workdir) / SUMMARY_FILE).read_text())


def _describe(record: dict) -> str:
  return (f"{record['name']}  {record['status']}  U={record['unique_tokens']:,} "
          f"T={record['total_tokens']:,} epochs={record['epochs']:.2f}")


def _counts(records: list[dict]) -> str:
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


# ---- local execution ---------------------------------------------------------------------------

def _lock(workdir: str) -> int:
  """An exclusive lock on <workdir>/sweep.lock, also held by the runs it starts (they inherit
  it), so a second sweep never trains the same run twice at once, even after a kill -9."""
  fd = os.open(os.path.join(workdir, LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    os.close(fd)
    raise DlmscaleError(f"another sweep, or a run it started, is still running in {workdir} "
                        f"({LOCK_FILE} is locked): wait for it or stop it, then rerun") from None
  return fd


def _child_setup(parent_pid: int, libc):
  def setup():
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the sweep's forwarder, until exec
    # Ctrl-C reaches the whole process group; the sweep forwards it as SIGTERM, on which a run
    # saves a checkpoint (SIGINT would kill it unsaved). Ignored signals stay ignored on exec.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if libc is not None:
      # Should the sweep die (kill -9), its runs get SIGTERM and save instead of training on.
      libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
      if os.getppid() != parent_pid:
        os._exit(143)
  return setup


def _libc():
  if not sys.platform.startswith("linux"):
    return None
  try:
    return ctypes.CDLL(None)
  except OSError:
    return None


class _LocalSweep:
  """Runs subprocesses, `parallel` at a time, keeping records and sweep.json current."""

  def __init__(self, runs, workdir, header, parallel, extra_args, out, env, poll_s):
    self.runs, self.workdir, self.header = runs, workdir, header
    self.parallel, self.extra_args, self.out, self.env = parallel, extra_args, out, env
    self.poll_s = poll_s
    self.records = {r.name: dict(run_record(r, run_command(r, extra_args)),
                                 log=os.path.join(workdir, LOG_DIR, f"{r.name}.log"))
                    for r in runs}
    self.index = {r.name: i for i, r in enumerate(runs, 1)}
    self.active = {}  # name -> (Popen, log file, start time)
    self.stopped_by = None

  def say(self, run: Run, message: str) -> None:
    print(f"[{self.index[run.name]}/{len(self.runs)}] {run.name}: {message}", file=self.out,
          flush=True)

  def save(self) -> None:
    write_summary(self.workdir, self.header, list(self.records.values()))

  def forward(self, signum, frame) -> None:
    if self.stopped_by is None:
      print(f"sweep: {signal.Signals(signum).name}: stopping the running runs (each saves a "
            "checkpoint)", file=self.out, flush=True)
      self.stopped_by = signum
    for proc, _, _ in self.active.values():
      if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)

  def start(self, run: Run, lock_fd: int, libc) -> None:
    record = self.records[run.name]
    log_path = epath.Path(record["log"])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = log_path.open("ab")
    log.write(f"==== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(record['command'])}\n"
              .encode())
    log.flush()
    proc = subprocess.Popen(record["command"], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=self.env, pass_fds=(lock_fd,),
                            preexec_fn=_child_setup(os.getpid(), libc))
    self.active[run.name] = (proc, log, time.time())
    if self.stopped_by is not None:  # the signal came while this one was being started
      proc.send_signal(signal.SIGTERM)
    resuming = record["status"] == "interrupted"
    record.update(status="running")
    self.say(run, f"{'resuming' if resuming else 'started'} (U={run.unique_tokens:,} "
                  f"T={run.total_tokens:,}, {run.epochs:.2f} epochs), log {log_path}")
    self.save()

  def finish(self, run: Run, code: int) -> None:
    proc, log, started = self.active.pop(run.name)
    log.close()
    record = self.records[run.name]
    wall = time.time() - started
    status = run_status(run.workdir)
    if code == 0 and status == "finished":
      self.say(run, f"finished in {wall:.0f}s")
    elif code in (143, -signal.SIGTERM):  # stopped: saved (interrupted), or before any step
      self.say(run, f"stopped (exit {code}), {status}: rerun the sweep to resume")
    else:
      status = "failed"
      why = "without results.json" if code == 0 else f"with exit code {code}"
      self.say(run, f"FAILED {why}, log {record['log']}")
    record.update(status=status, exit_code=code, wall_s=round(wall, 1))
    self.save()

  def execute(self) -> list[dict]:
    lock_fd, libc = _lock(self.workdir), _libc()
    queue = []
    for run in self.runs:
      if self.records[run.name]["status"] == "finished":
        self.say(run, "finished already, skipped")
      else:
        queue.append(run)
    self.save()
    handlers = {}
    try:
      for s in (signal.SIGTERM, signal.SIGINT):
        try:
          handlers[s] = signal.signal(s, self.forward)
        except ValueError:  # not the main thread: signals are the caller's business
          pass
      while (queue and self.stopped_by is None) or self.active:
        while queue and self.stopped_by is None and len(self.active) < self.parallel:
          self.start(queue.pop(0), lock_fd, libc)
        for run in [r for r in self.runs if r.name in self.active]:
          code = self.active[run.name][0].poll()
          if code is not None:
            self.finish(run, code)
        time.sleep(self.poll_s)
    finally:
      for s, h in handlers.items():
        signal.signal(s, h)
      for proc, log, _ in self.active.values():  # only on an exception of the sweep itself
        proc.terminate()
        proc.wait()
        log.close()
      os.close(lock_fd)
    return self.conclude()

  def conclude(self) -> list[dict]:
    records = list(self.records.values())
    done = [r for r in records if r["status"] == "finished"]
    print(f"sweep: {len(done)} of {len(records)} runs finished; summary in "
          f"{os.path.join(self.workdir, SUMMARY_FILE)}", file=self.out, flush=True)
    if self.stopped_by is not None:
      raise SweepInterrupted(f"sweep stopped by {signal.Signals(self.stopped_by).name}: running "
                             "runs saved a checkpoint; rerun the same command to resume")
    bad = [r for r in records if r["status"] != "finished"]
    if bad:
      raise SweepFailed(f"{len(bad)} of {len(records)} runs did not finish: " + "; ".join(
          f"{r['name']} ({r['status']}, exit {r.get('exit_code')}, log {r.get('log')})"
          for r in bad) + ": fix and rerun the sweep (finished runs are skipped)")
    return records


def run_local(runs: Sequence[Run], workdir: str, *, parallel: int = 1,
              extra_args: Sequence[str] = (), header: dict | None = None,
              out: TextIO | None = None, env: dict | None = None,
              poll_s: float = 0.1) -> list[dict]:
  """Runs the unfinished runs as subprocesses, `parallel` at a time; returns the records.

  Raises SweepFailed after all others are done when a run fails, SweepInterrupted when
  SIGTERM/SIGINT stopped the sweep (running runs saved a checkpoint).
  """
  if parallel < 1:
    raise DlmscaleError(f"parallel must be >= 1, got {parallel}")
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  header = dict(header or {}, workdir=os.path.abspath(workdir), launcher="local")
  return _LocalSweep(list(runs), workdir, header, parallel, tuple(extra_args),
                     out or sys.stdout, env, poll_s).execute()


# ---- the entry point ---------------------------------------------------------------------------

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
  if "://" in workdir:  # runs write their workdirs with local file calls
    raise DlmscaleError(f"workdir {workdir!r} is a URL: mount the bucket (e.g. gcsfuse) and pass "
                        "the mount path")
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
    print(f"dry run: nothing launched ({_counts(records)})", file=out)
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
          f"launched ({_counts(records)})", file=out)
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
  if os.path.isdir(workdir):  # the shared storage is mounted here too: leave the summary
    write_summary(workdir, dict(header, workdir=workdir, launcher=launcher), records)
  return records
