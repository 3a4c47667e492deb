"""1 JAX process vs 2 (real processes on loopback, CPU gloo collectives): the same global batches
whatever each process's Grain worker count and after a resume, and the same training run."""
import hashlib
import math
import json
import os
import socket
import subprocess
import sys
import time

import pytest

from dlmscale import experiment
from dlmscale.data import ensure_prepared

from _shared import TINY_CONFIG, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "tests", "scripts", "global_batches.py")
LAUNCHER = os.path.join(ROOT, "launch", "local.py")
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
  stream = experiment.make_stream(cfg, ensure_prepared(cfg.data))
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


def _train_launched(tmp_path, name, num_processes, devices_per_process):
  """Trains tests/configs/tiny.py (ar) through launch/local.py: (results, metrics, exit code)."""
  workdir = tmp_path / name
  proc = subprocess.run(
      [sys.executable, LAUNCHER, f"--num_processes={num_processes}",
       f"--devices_per_process={devices_per_process}", f"--log_dir={tmp_path / (name + '_logs')}",
       "--", f"--config={TINY_CONFIG}", f"--workdir={workdir}", "--config.objectives=ar"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  results = json.loads((workdir / "results.json").read_text())
  lines = (workdir / "ar" / "metrics.jsonl").read_text().splitlines()
  return results, [json.loads(line) for line in lines if '"train/loss"' in line]


def test_two_process_training_matches_one_process(tmp_path):
  """launch/local.py with 2 processes x 4 devices trains like 1 process x 8 devices: the same
  losses step by step (up to float summation order) and the same validation result."""
  one_results, one = _train_launched(tmp_path, "one", 1, 8)
  two_results, two = _train_launched(tmp_path, "two", 2, 4)
  assert [m["step"] for m in one] == [m["step"] for m in two] and len(one) >= 4
  for a, b in zip(one, two):
    assert math.isclose(a["train/loss"], b["train/loss"], rel_tol=1e-5), (a, b)
    assert math.isclose(a["train/grad_norm"], b["train/grad_norm"], rel_tol=1e-4), (a, b)
  assert one[-1]["train/loss"] < one[0]["train/loss"] - 1.0  # it trained
  assert one_results[0]["stream_fingerprint"] == two_results[0]["stream_fingerprint"]
  assert math.isclose(one_results[0]["val_mean"], two_results[0]["val_mean"], rel_tol=1e-5)


def test_launcher_stops_every_process_when_one_fails(tmp_path):
  """A bad config fails in every process: the launcher returns the error exit code, not a hang."""
  start = time.time()
  proc = subprocess.run(
      [sys.executable, LAUNCHER, "--num_processes=2", "--devices_per_process=2",
       f"--log_dir={tmp_path / 'logs'}", "--", f"--config={TINY_CONFIG}",
       f"--workdir={tmp_path / 'run'}", "--config.objectives=nope"],
      cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2, proc.stderr[-2000:]
  assert "nope" in proc.stderr and time.time() - start < 120
