"""Runs generated programs in a subprocess sandbox and says how each one ended.

Each program runs in its own Python process (sandbox_child.py) in a new session, with:
- a wall-clock timeout (timeout_s plus a start-up allowance), after which the whole process group
  is killed, and a CPU-time limit of about timeout_s (RLIMIT_CPU);
- an address-space limit of memory_mb (RLIMIT_AS: allocations past it raise MemoryError), a
  file-size limit (RLIMIT_FSIZE) and no core dumps;
- no network: a new, empty network namespace where the kernel allows it (ExecResult.network says
  'namespace' or 'user_namespace'), otherwise the socket / ssl / ctypes modules cannot be
  imported ('socket_disabled', a best effort, not a boundary);
- process creation, signals and destructive file calls disabled (against accidents, not attacks);
- a fresh temporary working directory (HOME and TMPDIR too), removed afterwards; stdin /dev/null;
  stdout and stderr captured together and truncated.

Statuses: passed, failed (an exception: detail names its type), timeout, memory (MemoryError, or
killed by SIGKILL that the sandbox did not send: the kernel's OOM killer), crashed (anything else,
e.g. a segfault or an exit before the program finished). run_program never raises for what the
program does; only bad limits raise ConfigError.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import math
import numbers
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from dlmscale.errors import ConfigError
from dlmscale.progress import Progress

STATUSES = ("passed", "failed", "timeout", "memory", "crashed")
NETWORK_MODES = ("auto", "socket_disabled")
STARTUP_ALLOWANCE_S = 1.0  # interpreter start-up on a loaded host, on top of timeout_s
FILE_LIMIT_MB = 16
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")


@dataclasses.dataclass(frozen=True)
class ExecResult:
  status: str  # one of STATUSES
  detail: str  # why it did not pass ('' when passed)
  output: str  # captured stdout + stderr, truncated
  seconds: float  # wall time, start-up included
  network: str  # isolation in force: namespace / user_namespace / socket_disabled ('' unknown)

  @property
  def passed(self) -> bool:
    return self.status == "passed"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def check_limits(timeout_s: float, memory_mb: int, network: str = "auto") -> None:
  if not (isinstance(timeout_s, numbers.Real) and 0 < timeout_s < math.inf):
    raise ConfigError(f"code.timeout_s must be a positive number of seconds, got {timeout_s!r}")
  if not (isinstance(memory_mb, numbers.Integral) and memory_mb >= 64):
    raise ConfigError(f"code.memory_mb must be an integer >= 64 (the interpreter alone needs "
                      f"tens of MB), got {memory_mb!r}")
  if network not in NETWORK_MODES:
    raise ConfigError(f"unknown sandbox network mode {network!r}: use one of {NETWORK_MODES}")


def run_program(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024,
                network: str = "auto", max_output_chars: int = 2000) -> ExecResult:
  """Runs `program` (Python source) in the sandbox; see the module docstring."""
  check_limits(timeout_s, memory_mb, network)
  start = time.monotonic()
  root = tempfile.mkdtemp(prefix="dlmscale-sandbox-")
  try:
    return _run_in(root, program, timeout_s, memory_mb, network, max_output_chars, start)
  except Exception as e:  # the sandbox itself failed (e.g. no disk): still a verdict, no raise
    return ExecResult("crashed", f"sandbox error: {type(e).__name__}: {e}", "",
                      time.monotonic() - start, "")
  finally:
    shutil.rmtree(root, ignore_errors=True)


def _run_in(root, program, timeout_s, memory_mb, network, max_output_chars, start) -> ExecResult:
  work = os.path.join(root, "work")
  os.mkdir(work)
  program_path, result_path, output_path = (os.path.join(root, name) for name in
                                            ("program.py", "result.json", "output.txt"))
  with open(program_path, "w", encoding="utf-8") as fh:
    fh.write(program)
  argv = [sys.executable, "-I", _CHILD, program_path, result_path, str(timeout_s),
          str(int(memory_mb)), str(FILE_LIMIT_MB), network]
  env = {"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
         "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
         # One BLAS thread: a thread pool's reserved stacks would eat the address-space limit.
         "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
  with open(output_path, "wb") as out:
    proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    timed_out = False
    try:
      proc.wait(timeout=timeout_s + STARTUP_ALLOWANCE_S)
    except subprocess.TimeoutExpired:
      timed_out = True
    finally:
      _kill_group(proc.pid)  # also whatever the program left running in its group
      proc.wait()
  seconds = time.monotonic() - start
  verdict = _read_json(result_path)
  output = _read_output(output_path, max_output_chars)
  if verdict.get("status") in STATUSES:
    return ExecResult(verdict["status"], str(verdict.get("detail", "")), output, seconds,
                      str(verdict.get("network", "")))
  status, detail = _judge_exit(proc.returncode, timed_out, timeout_s)
  return ExecResult(status, detail, output, seconds, "")


def _judge_exit(returncode: int, timed_out: bool, timeout_s: float) -> tuple[str, str]:
  """The verdict of a child that wrote none."""
  if timed_out:
    limit = timeout_s + STARTUP_ALLOWANCE_S
    return "timeout", f"still running after {limit:g} s (wall clock, start-up included): killed"
  if returncode < 0:
    sig = -returncode
    if sig == signal.SIGXCPU:
      return "timeout", "CPU time limit exceeded"
    if sig == signal.SIGKILL:
      return "memory", "killed by SIGKILL (the kernel's out-of-memory killer)"
    if sig == signal.SIGXFSZ:
      return "crashed", f"wrote more than {FILE_LIMIT_MB} MB (file size limit)"
    return "crashed", f"killed by {signal.Signals(sig).name}"
  return "crashed", f"exited with code {returncode} before the program finished"


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _read_json(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as fh:
      value = json.load(fh)
    return value if isinstance(value, dict) else {}
  except (OSError, ValueError):
    return {}


def _read_output(path: str, max_chars: int) -> str:
  try:
    size = os.path.getsize(path)
    with open(path, "rb") as fh:
      head = fh.read(4 * max_chars).decode("utf-8", errors="replace")
  except OSError:
    return ""
  if len(head) > max_chars or size > 4 * max_chars:
    return head[:max_chars] + f"\n...[truncated; {size} bytes in all]"
  return head


def default_workers() -> int:
  """A small pool: each program may use a whole core for up to timeout_s."""
  return max(1, min(4, (os.cpu_count() or 1)))


def run_programs(programs: list[str], *, workers: int | None = None, timeout_s: float = 10.0,
                 memory_mb: int = 1024, network: str = "auto") -> list[ExecResult]:
  """run_program over many programs, `workers` at a time; results in input order."""
  check_limits(timeout_s, memory_mb, network)
  workers = default_workers() if workers is None else workers
  if workers < 1:
    raise ConfigError(f"sandbox workers must be >= 1, got {workers}")
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool, \
      Progress("execute", len(programs), "program") as bar:
    results = []
    for result in pool.map(lambda p: run_program(p, timeout_s=timeout_s, memory_mb=memory_mb,
                                                 network=network), programs):
      results.append(result)
      bar.update()
    bar.summary = f"{sum(r.passed for r in results)} passed"
    return results


def network_isolation(network: str = "auto") -> str:
  """Which network isolation the sandbox achieves on this host (runs one empty program)."""
  return run_program("", timeout_s=5.0, memory_mb=256, network=network).network
