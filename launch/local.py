"""Runs N JAX processes of one dlmscale command on this machine (loopback, CPU gloo collectives).

  python launch/local.py --num_processes=2 --devices_per_process=4 -- \
      --config=experiments/quickstart.py --workdir=runs/two_process

Every process runs `python -m dlmscale.main <args>` with its own --process_id, the shared
--coordinator_address and --cpu_collectives=gloo, and `devices_per_process` fake CPU devices: the
same entry point a TPU VM host runs, so a multi-host run can be rehearsed on one machine. Process
0's output is shown; the others' goes to <log_dir>/process_<i>.log. The launcher exits with the
first non-zero exit code (terminating the rest), forwards SIGTERM/SIGINT to every process (a
preempted run saves and exits 143, like a single process), and exits 0 when all succeed.
"""
from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def process_commands(args: list[str], num_processes: int, port: int) -> list[list[str]]:
  """The command line of each process."""
  common = [sys.executable, "-m", "dlmscale.main", *args]
  if num_processes == 1:
    return [common]
  return [[*common, f"--coordinator_address=127.0.0.1:{port}", f"--num_processes={num_processes}",
           f"--process_id={i}", "--cpu_collectives=gloo"] for i in range(num_processes)]


def launch(args: list[str], num_processes: int, devices_per_process: int,
           log_dir: str | None = None, poll_s: float = 0.2) -> int:
  """Starts the processes, waits for them, returns the launcher's exit code."""
  if num_processes < 1 or devices_per_process < 1:
    print(f"error: --num_processes ({num_processes}) and --devices_per_process "
          f"({devices_per_process}) must be >= 1", file=sys.stderr)
    return 2
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=" ".join(f for f in os.environ.get("XLA_FLAGS", "").split()
                                if "device_count" not in f) +
             f" --xla_force_host_platform_device_count={devices_per_process}",
             # XLA's CPU client runs all devices on one pool of NPROC threads; back-to-back steps
             # with collectives need ~2 per device or they deadlock (tests/test_cpu_collectives.py).
             NPROC=str(max(int(os.environ.get("NPROC") or 0), 2 * devices_per_process)))
  log_dir = log_dir or tempfile.mkdtemp(prefix="dlmscale-launch-")
  os.makedirs(log_dir, exist_ok=True)
  procs, logs = [], []
  for i, cmd in enumerate(process_commands(args, num_processes, free_port())):
    out = None if i == 0 else open(os.path.join(log_dir, f"process_{i}.log"), "w")
    logs.append(out)
    procs.append(subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT if out else
                                  None))

  def forward(signum, frame):
    for p in procs:
      if p.poll() is None:
        p.send_signal(signum)

  previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
  try:
    code = 0
    while any(p.poll() is None for p in procs):
      failed = [p.returncode for p in procs if p.returncode not in (None, 0)]
      if failed and not code:
        code = failed[0]
        # One process gone means the collectives of the others will hang: stop them.
        for p in procs:
          if p.poll() is None:
            p.terminate()
      time.sleep(poll_s)
    code = code or next((p.returncode for p in procs if p.returncode), 0)
  finally:
    for s, h in previous.items():
      signal.signal(s, h)
    for f in logs:
      if f:
        f.close()
  if code and num_processes > 1:
    print(f"launch: a process exited with {code}; logs of processes 1..{num_processes - 1} in "
          f"{log_dir}", file=sys.stderr)
  return code


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--num_processes", type=int, default=2)
  p.add_argument("--devices_per_process", type=int, default=4)
  p.add_argument("--log_dir", default=None, help="where processes 1..N-1 write their output")
  p.add_argument("args", nargs=argparse.REMAINDER, help="-- then dlmscale.main's arguments")
  a = p.parse_args(argv)
  args = a.args[1:] if a.args[:1] == ["--"] else a.args
  return launch(args, a.num_processes, a.devices_per_process, a.log_dir)


if __name__ == "__main__":
  sys.exit(main())
