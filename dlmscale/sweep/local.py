"""Local execution: runs as `python -m dlmscale.main` subprocesses, `parallel` at a time, under a
workdir lock, with signals forwarded so an interrupted sweep leaves every run resumable."""
from __future__ import annotations

import ctypes
import fcntl
import hashlib
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from typing import Sequence, TextIO

from etils import epath

from dlmscale import storage
from dlmscale.errors import DlmscaleError
from dlmscale.sweep.plan import Run, SweepFailed, SweepInterrupted
from dlmscale.sweep.records import (SUMMARY_FILE, run_command, run_record, run_status,
                                    write_summary)

LOCK_FILE = "sweep.lock"
LOG_DIR = "logs"
_PR_SET_PDEATHSIG = 1


def local_side(workdir: str) -> str:
  """Where the sweep keeps what must be a local file: the workdir itself, or for a bucket
  (gs://) a folder of this host named after it, holding the lock and the logs the runs write
  (each log is uploaded to <workdir>/logs/ when its run ends).

  A bucket cannot hold the lock: it has no flock, and a lock object would outlive a kill -9. So
  on a bucket the lock keeps out a second sweep of the same workdir on this host only."""
  if not storage.is_remote(workdir):
    return workdir
  digest = hashlib.sha256(workdir.rstrip("/").encode()).hexdigest()[:16]
  path = os.path.join(tempfile.gettempdir(), "dlmscale-sweeps", digest)
  os.makedirs(path, exist_ok=True)
  return path


def _lock(workdir: str) -> int:
  """An exclusive lock on <workdir>/sweep.lock (see local_side for a bucket), also held by the
  runs it starts (they inherit it), so a second sweep never trains the same run twice at once,
  even after a kill -9."""
  fd = os.open(os.path.join(local_side(workdir), LOCK_FILE), os.O_RDWR | os.O_CREAT, 0o644)
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
                                 log=storage.join(workdir, LOG_DIR, f"{r.name}.log"))
                    for r in runs}
    self.index = {r.name: i for i, r in enumerate(runs, 1)}
    self.active = {}  # name -> (Popen, log file, start time)
    self.stopped_by = None

  def local_log(self, run: Run) -> str:
    """The file `run`'s output goes to: its record's log, or on a bucket a local copy of it."""
    if not storage.is_remote(self.workdir):
      return self.records[run.name]["log"]
    return os.path.join(local_side(self.workdir), LOG_DIR, f"{run.name}.log")

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
    log_path = epath.Path(self.local_log(run))  # a subprocess writes a local file only
    log_path.parent.mkdir(parents=True, exist_ok=True)
    remote = epath.Path(record["log"])
    if log_path != remote and not log_path.exists() and remote.exists():
      log_path.write_bytes(remote.read_bytes())  # a resumed run's log goes on from its last one
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
    if self.local_log(run) != record["log"]:
      epath.Path(record["log"]).write_bytes(epath.Path(self.local_log(run)).read_bytes())
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
          f"{storage.join(self.workdir, SUMMARY_FILE)}", file=self.out, flush=True)
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
  where = workdir if storage.is_remote(workdir) else os.path.abspath(workdir)
  header = dict(header or {}, workdir=where, launcher="local")
  return _LocalSweep(list(runs), workdir, header, parallel, tuple(extra_args),
                     out or sys.stdout, env, poll_s).execute()
