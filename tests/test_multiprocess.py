"""The global batches are the same with 1 JAX process and with 2 (real processes on loopback,
CPU gloo collectives), whatever each process's Grain worker count, and after a resume."""
import hashlib
import json
import os
import socket
import subprocess
import sys

import pytest

from dlmscale import runner
from dlmscale.data import ensure_prepared

from _shared import tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "global_batches.py")
DEVICES = 4  # global devices in every layout


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _run(tmp_path, name, num_processes, loader_workers, start_step=0) -> dict:
  """Launches the processes of one layout and returns process 0's hashes."""
  out = tmp_path / f"{name}.json"
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={DEVICES // num_processes}")
  port = _free_port()
  procs = [subprocess.Popen(
      [sys.executable, SCRIPT, f"--port={port}", f"--num_processes={num_processes}",
       f"--process_id={i}", f"--loader_workers={loader_workers[i]}",
       f"--start_step={start_step}", f"--out={out}"],
      env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
      for i in range(num_processes)]
  logs = [p.communicate(timeout=240)[0] for p in procs]
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  return json.loads(out.read_text())


@pytest.fixture(scope="module")
def expected():
  """Hashes of every global batch computed in this process from the stream itself."""
  cfg = tiny_config()
  stream = runner.make_stream(cfg, ensure_prepared(cfg.data))
  hashes = [hashlib.sha256(stream.global_batch_at(k).astype("<i4").tobytes()).hexdigest()
            for k in range(stream.num_steps)]
  assert len(set(hashes)) == len(hashes)  # distinct batches: an off-by-one step would show
  return {"hashes": hashes, "fingerprint": stream.fingerprint()}


def test_one_and_two_processes_give_the_same_global_batches(tmp_path, expected):
  one = _run(tmp_path, "one", 1, [0])
  two = _run(tmp_path, "two", 2, [0, 2])  # process 1 reads through 2 Grain worker processes
  assert (one["processes"], two["processes"]) == (1, 2)
  assert one["devices"] == two["devices"] == DEVICES
  assert one["rows"] == [0, 16] and two["rows"] == [0, 8]  # process 0's slice of the batch
  assert one["hashes"] == expected["hashes"]
  assert two["hashes"] == expected["hashes"]
  assert one["fingerprint"] == two["fingerprint"] == expected["fingerprint"]


def test_two_processes_resumed_mid_stream(tmp_path, expected):
  k = 5
  resumed = _run(tmp_path, "resumed", 2, [1, 0], start_step=k)
  assert resumed["hashes"] == expected["hashes"][k:]
