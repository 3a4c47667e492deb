"""1 JAX process vs 2 (real processes on loopback, CPU gloo collectives): the same global batches
whatever each process's Grain worker count and after a resume, and the same training run."""
import hashlib
import math
import json
import os
import shutil
import signal
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


def _launch(workdir, log_dir, num_processes, devices_per_process, *args, popen=False):
  cmd = [sys.executable, LAUNCHER, f"--num_processes={num_processes}",
         f"--devices_per_process={devices_per_process}", f"--log_dir={log_dir}", "--",
         f"--config={TINY_CONFIG}", f"--workdir={workdir}", "--config.objectives=ar", *args]
  if popen:
    return subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
  return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


def _metrics_without_wall_clock(workdir):
  lines = (workdir / "ar" / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k != "train/tokens_per_s"}
          for line in lines]


def test_sigterm_to_two_processes_both_save_the_same_step_and_resume_equal(tmp_path):
  """Each process gets SIGTERM at its own moment; they agree on one step, both write their part
  of that checkpoint, exit 143, and the resumed run logs what an uninterrupted one does."""
  long_run = ("--config.data.total_tokens=131072",)  # 256 steps: time to be interrupted
  ref = _launch(tmp_path / "ref", tmp_path / "ref_logs", 2, 4, *long_run)
  assert ref.returncode == 0, ref.stderr[-2000:]
  workdir = tmp_path / "run"
  proc = _launch(workdir, tmp_path / "logs", 2, 4, *long_run, popen=True)
  metrics = workdir / "ar" / "metrics.jsonl"
  deadline = time.time() + 240
  while not (metrics.exists() and metrics.read_text().strip()) and proc.poll() is None:
    assert time.time() < deadline, "no metrics within 240 s"
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=240)
  assert proc.returncode == 143, (proc.returncode, stderr[-2000:])
  saved = [int(p.name) for p in (workdir / "ar" / "checkpoints").iterdir() if p.name.isdigit()]
  step = max(saved)
  assert step < 256 and f"saved a checkpoint at step {step}" in stderr
  # Both processes wrote their shards of it.
  assert {p.name for p in (workdir / "ar" / "checkpoints" / str(step) / "state").glob(
      "ocdbt.process_*")} == {"ocdbt.process_0", "ocdbt.process_1"}
  again = _launch(workdir, tmp_path / "logs2", 2, 4, *long_run)
  assert again.returncode == 0, again.stderr[-2000:]
  assert _metrics_without_wall_clock(workdir) == _metrics_without_wall_clock(tmp_path / "ref")
  assert (json.loads((workdir / "results.json").read_text())[0]["val_mean"] ==
          json.loads((tmp_path / "ref" / "results.json").read_text())[0]["val_mean"])


def test_a_one_process_run_resumes_on_two_processes(tmp_path):
  """Elastic resume: saved by 1 process x 8 devices, continued by 2 x 4 from step 8, it ends
  like the uninterrupted run up to float summation order."""
  one = _launch(tmp_path / "one", tmp_path / "one_logs", 1, 8)
  assert one.returncode == 0, one.stderr[-2000:]
  workdir = tmp_path / "elastic"
  shutil.copytree(tmp_path / "one", workdir)
  for step in ("12", "16"):
    shutil.rmtree(workdir / "ar" / "checkpoints" / step)
  two = _launch(workdir, tmp_path / "two_logs", 2, 4)
  assert two.returncode == 0, two.stderr[-2000:]
  assert "resumed at step 8" in two.stderr
  got, want = _metrics_without_wall_clock(workdir), _metrics_without_wall_clock(tmp_path / "one")
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for a, b in zip(got, want):
    for k in ("train/loss", "train/grad_norm", "eval/val_mean"):
      if k in b:
        assert math.isclose(a[k], b[k], rel_tol=1e-4), (k, a, b)
  starts = json.loads((workdir / "ar" / "provenance.json").read_text())["starts"]
  assert [(s["start_step"], s["devices"]["process_count"]) for s in starts] == [(0, 1), (8, 2)]
