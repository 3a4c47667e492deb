"""Runs generated programs in a sandbox and says how each one ended.

Each program runs in its own Python process (sandbox_child.py), under bubblewrap where it works
(sandbox_bwrap.py: read-only root, private /tmp, no network, new namespaces; backend='auto'),
otherwise as a plain subprocess in a new session. Either way it has:
- a wall-clock timeout (timeout_s plus a start-up allowance), after which the whole process group
  is killed, and a CPU-time limit of about timeout_s (RLIMIT_CPU);
- an address-space limit of memory_mb (RLIMIT_AS: allocations past it raise MemoryError), a
  file-size limit (RLIMIT_FSIZE) and no core dumps;
- no network: bwrap's, else a new, empty network namespace where the kernel allows it
  (ExecResult.network says 'bwrap', 'namespace' or 'user_namespace'), otherwise the socket / ssl /
  ctypes modules cannot be imported ('socket_disabled', a best effort, not a boundary);
- process creation, signals, tracing and destructive file calls disabled (against accidents);
- a fresh temporary working directory (HOME and TMPDIR too), removed afterwards; stdin /dev/null;
  stdout and stderr captured together and truncated.

The verdict never touches the disk: the child reads a random token from one pipe (closed before
the program starts) and, once the program has returned, writes one line with that token and the
verdict to a second pipe. A line without the token is ignored and two lines with it void the
verdict, so writing files, printing markers, writing blindly to inherited descriptors, closing
them, forking or exiting early cannot turn a failure into a pass. The program shares the
harness's process, so code written to read the harness's own memory could still find the token:
the sandbox contains accidents and reward hacking by ordinary means, not a targeted attack.

Statuses: passed, failed (an exception: detail names its type), timeout, memory (MemoryError, or
killed by SIGKILL that the sandbox did not send: the kernel's OOM killer), crashed (anything else,
e.g. a segfault or an exit before the program finished). run_program never raises for what the
program does; only bad limits or an unusable backend='bwrap' raise ConfigError.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import math
import numbers
import os
import secrets
import selectors
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from dlmscale.errors import ConfigError
from dlmscale.evaluation.code import sandbox_bwrap

STATUSES = ("passed", "failed", "timeout", "memory", "crashed")
NETWORK_MODES = ("auto", "socket_disabled")
BACKENDS = sandbox_bwrap.BACKENDS
STARTUP_ALLOWANCE_S = 1.0  # interpreter start-up on a loaded host, on top of timeout_s
FILE_LIMIT_MB = 16
VERDICT_LIMIT = 1 << 16  # bytes read from the verdict pipe; a program flooding it gets no more
_CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_child.py")


@dataclasses.dataclass(frozen=True)
class ExecResult:
  status: str  # one of STATUSES
  detail: str  # why it did not pass ('' when passed)
  output: str  # captured stdout + stderr, truncated
  seconds: float  # wall time, start-up included
  network: str  # isolation in force: bwrap / namespace / user_namespace / socket_disabled / ''
  backend: str = ""  # bwrap or subprocess ('' when nothing ran)

  @property
  def passed(self) -> bool:
    return self.status == "passed"

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)


def check_limits(timeout_s: float, memory_mb: int, network: str = "auto",
                 backend: str = "auto") -> None:
  if not (isinstance(timeout_s, numbers.Real) and 0 < timeout_s < math.inf):
    raise ConfigError(f"code.timeout_s must be a positive number of seconds, got {timeout_s!r}")
  if not (isinstance(memory_mb, numbers.Integral) and memory_mb >= 64):
    raise ConfigError(f"code.memory_mb must be an integer >= 64 (the interpreter alone needs "
                      f"tens of MB), got {memory_mb!r}")
  if network not in NETWORK_MODES:
    raise ConfigError(f"unknown sandbox network mode {network!r}: use one of {NETWORK_MODES}")
  if backend not in BACKENDS:
    raise ConfigError(f"unknown sandbox backend {backend!r}: use one of {BACKENDS}")


def run_program(program: str, *, timeout_s: float = 10.0, memory_mb: int = 1024,
                network: str = "auto", max_output_chars: int = 2000,
                backend: str = "auto") -> ExecResult:
  """Runs `program` (Python source) in the sandbox; see the module docstring."""
  check_limits(timeout_s, memory_mb, network, backend)
  backend, bwrap = sandbox_bwrap.choose(backend)
  start = time.monotonic()
  root = tempfile.mkdtemp(prefix="dlmscale-sandbox-")
  try:
    return _run_in(root, program, timeout_s, memory_mb, network, max_output_chars, start, bwrap)
  except Exception as e:  # the sandbox itself failed (e.g. no disk): still a verdict, no raise
    return ExecResult("crashed", f"sandbox error: {type(e).__name__}: {e}", "",
                      time.monotonic() - start, "", backend)
  finally:
    shutil.rmtree(root, ignore_errors=True)


def _run_in(root, program, timeout_s, memory_mb, network, max_output_chars, start,
            bwrap) -> ExecResult:
  work = os.path.join(root, "work")
  os.mkdir(work)
  program_path, output_path = os.path.join(root, "program.py"), os.path.join(root, "output.txt")
  with open(program_path, "w", encoding="utf-8") as fh:
    fh.write(program)
  token = secrets.token_hex(16)
  key_r, key_w = os.pipe()
  os.write(key_w, token.encode())  # 32 bytes: never blocks
  os.close(key_w)
  verdict_r, verdict_w = os.pipe()
  # Under bwrap the network is already gone; the child only disables modules if asked to.
  child_network = "isolated" if bwrap and network == "auto" else network
  argv = [sys.executable, "-I", _CHILD, program_path, str(key_r), str(verdict_w), str(timeout_s),
          str(int(memory_mb)), str(FILE_LIMIT_MB), child_network]
  if bwrap:
    argv = sandbox_bwrap.wrap(bwrap, argv, read_only=[program_path], writable=[work], cwd=work)
  env = {"PATH": os.defpath, "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
         "PYTHONDONTWRITEBYTECODE": "1", "PYTHONHASHSEED": "0",
         # One BLAS thread: a thread pool's reserved stacks would eat the address-space limit.
         "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
  try:
    with open(output_path, "wb") as out:
      proc = subprocess.Popen(argv, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                              stderr=subprocess.STDOUT, start_new_session=True,
                              pass_fds=(key_r, verdict_w))
      os.close(key_r)
      os.close(verdict_w)
      key_r = verdict_w = -1
      try:
        deadline = time.monotonic() + timeout_s + STARTUP_ALLOWANCE_S
        data, timed_out = _collect(proc, verdict_r, deadline)
      finally:
        _kill_group(proc.pid)  # also whatever the program left running in its group
        proc.wait()
      data += _drain(verdict_r, VERDICT_LIMIT - len(data))
  finally:
    for fd in (key_r, verdict_w, verdict_r):
      if fd >= 0:
        os.close(fd)
  seconds = time.monotonic() - start
  output = _read_output(output_path, max_output_chars)
  backend = "bwrap" if bwrap else "subprocess"
  verdict = parse_verdict(data, token)
  if verdict is not None:
    return ExecResult(*verdict[:2], output, seconds, verdict[2], backend)
  status, detail = _judge_exit(proc.returncode, timed_out, timeout_s, bool(bwrap))
  return ExecResult(status, detail, output, seconds, "", backend)


def _collect(proc: subprocess.Popen, fd: int, deadline: float) -> tuple[bytes, bool]:
  """Reads the verdict pipe until the child exits; (bytes read, ran past the deadline)."""
  os.set_blocking(fd, False)
  data = bytearray()
  with selectors.DefaultSelector() as selector:
    selector.register(fd, selectors.EVENT_READ)
    reading = True
    while proc.poll() is None:
      left = deadline - time.monotonic()
      if left <= 0:
        return bytes(data), True
      if not reading:  # at EOF or the cap: only the exit is left to wait for
        try:
          proc.wait(timeout=left)
        except subprocess.TimeoutExpired:
          return bytes(data), True
        break
      if selector.select(timeout=min(left, 0.05)):
        try:
          chunk = os.read(fd, min(VERDICT_LIMIT - len(data), 1 << 14))
        except BlockingIOError:  # a spurious wake-up
          continue
        data += chunk
        reading = bool(chunk) and len(data) < VERDICT_LIMIT
  return bytes(data), False


def _drain(fd: int, limit: int) -> bytes:
  """What is left in the pipe once every writer is dead, without blocking."""
  os.set_blocking(fd, False)
  data = b""
  while len(data) < limit:
    try:
      chunk = os.read(fd, min(limit - len(data), 1 << 14))
    except BlockingIOError:
      break
    if not chunk:
      break
    data += chunk
  return data


def parse_verdict(data: bytes, token: str) -> tuple[str, str, str] | None:
  """(status, detail, network) from the one line that starts with the token; None without one.

  Lines without the token are what the program wrote itself; two lines with it mean the token
  leaked into the program, so the run is judged crashed rather than trusted."""
  key = token.encode() + b" "
  lines = [line[len(key):] for line in data.split(b"\n") if line.startswith(key)]
  if len(lines) > 1:
    return "crashed", "more than one verdict on the sandbox's verdict pipe: not trusted", ""
  if not lines:
    return None
  status, network, detail = (lines[0].decode("utf-8", "replace").split("\t", 2) + ["", ""])[:3]
  if status not in STATUSES:
    return "crashed", f"malformed verdict {status[:40]!r}", ""
  return status, detail, network


def _judge_exit(returncode: int, timed_out: bool, timeout_s: float,
                bwrap: bool = False) -> tuple[str, str]:
  """The verdict of a child that wrote none."""
  if timed_out:
    limit = timeout_s + STARTUP_ALLOWANCE_S
    return "timeout", f"still running after {limit:g} s (wall clock, start-up included): killed"
  if bwrap and returncode > 128:
    returncode = -(returncode - 128)  # bwrap exits 128 + N when its program died of signal N
  if returncode < 0:
    sig = -returncode
    if sig == signal.SIGXCPU:
      return "timeout", "CPU time limit exceeded"
    if sig == signal.SIGKILL:
      return "memory", "killed by SIGKILL (the kernel's out-of-memory killer)"
    if sig == signal.SIGXFSZ:
      return "crashed", f"wrote more than {FILE_LIMIT_MB} MB (file size limit)"
    try:
      return "crashed", f"killed by {signal.Signals(sig).name}"
    except ValueError:
      return "crashed", f"killed by signal {sig}"
  return "crashed", (f"exited with code {returncode} without a verdict (an exit before the "
                     "program finished, or the verdict pipe closed)")


def _kill_group(pgid: int, wait_s: float = 1.0) -> None:
  """SIGKILLs the group, then waits (a bounded while) until none of it is left."""
  end = time.monotonic() + wait_s
  sig = signal.SIGKILL
  while True:
    try:
      os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
      return
    if time.monotonic() > end:  # e.g. zombies where nothing reaps orphans
      return
    sig = 0  # from now on only asks whether any member is left
    time.sleep(0.01)


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
                 memory_mb: int = 1024, network: str = "auto",
                 backend: str = "auto") -> list[ExecResult]:
  """run_program over many programs, `workers` at a time; results in input order."""
  check_limits(timeout_s, memory_mb, network, backend)
  backend = sandbox_bwrap.choose(backend)[0]  # probed (and any fallback logged) once, up front
  workers = default_workers() if workers is None else workers
  if workers < 1:
    raise ConfigError(f"sandbox workers must be >= 1, got {workers}")
  with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
    return list(pool.map(lambda p: run_program(p, timeout_s=timeout_s, memory_mb=memory_mb,
                                               network=network, backend=backend), programs))


def network_isolation(network: str = "auto", backend: str = "auto") -> str:
  """Which network isolation the sandbox achieves on this host (runs one empty program)."""
  return run_program("", timeout_s=5.0, memory_mb=256, network=network, backend=backend).network
