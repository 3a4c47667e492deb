"""Run directories on Cloud Storage, end to end against a local GCS emulator (tests/gcs_emulator.py).

A CLI training run with --workdir=gs://..., stopped by SIGTERM and resumed from the bucket, ends
equal to an uninterrupted local run (parameters, metrics.jsonl, TensorBoard scalars, validation);
eval and sample then read it back from the bucket. Locations that cannot work are one-line errors
before any work.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import jax
import numpy as np
import pytest

import gcs_emulator
from _shared import cli_env, tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.py"
STUDY = REPO / "tests" / "configs" / "tiny_study.py"
if str(REPO) not in sys.path:  # the config files import `configs.models` from the repo root
  sys.path.insert(0, str(REPO))

from dlmscale import experiment, storage, sweep  # noqa: E402
from dlmscale.errors import ConfigError, DlmscaleError  # noqa: E402
from dlmscale.sweep.local import local_side  # noqa: E402
from dlmscale.metrics import read_metrics  # noqa: E402
from dlmscale.optional import MissingExtraError  # noqa: E402

# The arguments of test_training.py's SIGTERM test (so the session's compilation cache serves
# both): 100 steps of constant lr, logged every step, so the run is still going when SIGTERM lands.
STEPS = 100
ARGS = ["--config.objectives=('ar',)", "--config.train.schedule=constant",
        f"--config.data.total_tokens={STEPS * 16 * 32}", "--config.train.log_every=1",
        "--config.train.checkpoint_every=50"]
BUCKET = "dlmscale-runs"


def cli(workdir, *args, mode="train") -> list[str]:
  config = [f"--config={TINY}", *ARGS] if mode == "train" else []
  return [sys.executable, "-m", "dlmscale.main", f"--mode={mode}", f"--workdir={workdir}",
          *config, *args]


@pytest.fixture(scope="module")
def emulator():
  with gcs_emulator.running() as emu:  # also points this process's clients at it
    emu.create_bucket(BUCKET)
    yield emu


def _tb_scalars(blobs: list[bytes], tag: str) -> dict[int, float]:
  """`tag`'s values by step in TensorBoard event files (TFRecord framing around Event protos)."""
  from tensorboardX.proto import event_pb2
  out = {}
  for data in blobs:
    i = 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4
      out.update({event.step: v.simple_value for v in event.summary.value if v.tag == tag})
  return out


def _train_losses(workdir) -> dict[int, float]:
  return {r["step"]: r["train/loss"] for r in read_metrics(str(workdir)) if "train/loss" in r}


def test_run_on_a_bucket_resumes_from_it_and_equals_a_local_run(emulator, tmp_path,
                                                                 tmp_path_factory):
  env = dict(cli_env(tmp_path_factory), **emulator.env)
  run, ref_dir = f"gs://{BUCKET}/tiny", tmp_path / "ref"
  with open(tmp_path / "ref.log", "w") as ref_log:  # the uninterrupted local reference
    ref = subprocess.Popen(cli(ref_dir), cwd=tmp_path, env=env, stdout=ref_log,
                           stderr=subprocess.STDOUT)
  proc = subprocess.Popen(cli(run), cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      logged = emulator.read(BUCKET, "tiny/ar/metrics.jsonl") or b""
      if len(logged.splitlines()) >= 3:
        break
      time.sleep(0.1)
    assert proc.poll() is None, "the run ended before SIGTERM: " + proc.communicate()[1][-3000:]
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
  finally:
    for p in (proc, ref):
      if p.poll() is None:
        p.kill()
        p.wait()
  assert proc.returncode == 143, stderr[-3000:]
  stopped = int(re.search(r"SIGTERM received, saved a checkpoint at step (\d+) ", stderr).group(1))
  assert 3 <= stopped < STEPS
  names = emulator.objects(BUCKET, "tiny/")
  saved = {int(n.split("/")[3]) for n in names
           if n.startswith("tiny/ar/checkpoints/") and n.split("/")[3].isdigit()}
  assert max(saved) == stopped
  assert "tiny/ar/config.json" in names and "tiny/results.json" not in names
  assert not any(p.name.startswith("gs") for p in tmp_path.iterdir())  # no local 'gs:' folder

  again = subprocess.run(cli(run), cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resumed at step {stopped} from {run}/ar/checkpoints" in again.stderr

  # In this process too, through the emulator: the bucket's checkpoint equals the local one.
  cfg = tiny_config(**{"objectives": ("ar",), "train.schedule": "constant",
                       "data.total_tokens": STEPS * 16 * 32})
  exp = experiment.build_experiment(cfg, "ar")
  params, step = experiment.restore_params(exp, f"{run}/ar")
  ref_params, ref_step = experiment.restore_params(exp, str(ref_dir / "ar"))
  assert step == ref_step == STEPS
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  losses = _train_losses(run + "/ar")
  assert losses == _train_losses(ref_dir / "ar") and sorted(losses) == list(range(1, STEPS + 1))
  events = [emulator.read(BUCKET, n) for n in emulator.objects(BUCKET, "tiny/ar/tb/events.")]
  assert len(events) >= 2  # one event file per start, as locally
  local_events = [p.read_bytes() for p in (ref_dir / "ar" / "tb").glob("events.out.tfevents.*")]
  assert _tb_scalars(events, "train/loss") == _tb_scalars(local_events, "train/loss")
  result = json.loads(emulator.read(BUCKET, "tiny/results.json"))[0]
  ref_result = json.loads((ref_dir / "results.json").read_text())[0]
  assert result["val_mean"] == ref_result["val_mean"]

  # eval and sample read the run back from the bucket: its saved config, its checkpoint.
  evaluated = subprocess.run(cli(run, mode="eval"), cwd=tmp_path, env=env, capture_output=True,
                             text=True, timeout=300)
  assert evaluated.returncode == 0, evaluated.stderr[-3000:]
  assert json.loads(emulator.read(BUCKET, "tiny/eval.json"))[0]["val_mean"] == ref_result["val_mean"]
  sampled = subprocess.run(cli(run, "--config.sample.max_new_tokens=4", mode="sample"),
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
  assert sampled.returncode == 0, sampled.stderr[-3000:]
  assert f"[ar] ar checkpoint step {STEPS}" in sampled.stdout


def test_sweep_on_a_bucket_keeps_its_records_there(emulator, tmp_path_factory):
  root = f"gs://{BUCKET}/sweep-{uuid.uuid4().hex[:8]}"  # the host-side lock folder is per URL
  env = dict(cli_env(tmp_path_factory), **emulator.env)
  runs = sweep.plan_sweep(str(STUDY), "cpu", root)[:1]  # one run of 16 steps is enough here
  name = runs[0].name
  records = sweep.run_local(runs, root, env=env, out=io.StringIO())
  assert [r["status"] for r in records] == ["finished"]
  summary = sweep.load_summary(root)  # sweep.json, read back from the bucket
  assert summary["workdir"] == root and [r["status"] for r in summary["runs"]] == ["finished"]
  assert summary["runs"][0]["log"] == f"{root}/logs/{name}.log"
  log = emulator.read(BUCKET, f"{root.split('/', 3)[3]}/logs/{name}.log").decode()  # uploaded when the run ended
  assert log.startswith("==== ") and "AR val NLL" in log
  assert sweep.run_status(f"{root}/{name}") == "finished"
  # A bucket has no flock: the lock is a file of this host, named after the workdir.
  with open(os.path.join(local_side(root), sweep.LOCK_FILE), "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    with pytest.raises(DlmscaleError, match="another sweep, or a run it started, is still"):
      sweep.run_local(runs, root, env=env, out=io.StringIO())
  again = io.StringIO()
  sweep.run_local(runs, root, env=env, out=again)
  assert f"{name}: finished already, skipped" in again.getvalue()


def test_profiler_trace_of_a_run_on_a_bucket_lands_there(emulator):
  from dlmscale import profiling
  workdir = f"gs://{BUCKET}/profiled"
  x_N = np.arange(8.0)
  with profiling.StepProfiler("1:3", workdir) as profiler:
    for step in range(4):
      profiler.step(step, x_N)
      x_N = jax.numpy.sin(x_N) + 1
  names = emulator.objects(BUCKET, "profiled/profile/plugins/profile/")
  assert any(n.endswith(".xplane.pb") for n in names), names  # TensorBoard's profile plugin
  assert any(n.endswith(".trace.json.gz") for n in names), names  # Perfetto


@pytest.mark.parametrize("location, message", [
    ("s3://bucket/run", r"s3:// run directories are not supported"),
    ("gcs://bucket/run", r"gcs:// run directories are not supported"),
    ("gs:/bucket/run", r"not a bucket URL \(gs: needs two slashes\)"),
    ("gs:///run", r"names no bucket"),
])
def test_locations_that_cannot_work_are_named(location, message):
  with pytest.raises(ConfigError, match=message):
    storage.check_location(location)


def test_local_paths_and_gs_pass_and_gs_without_the_gcs_extra_names_it(monkeypatch):
  for location in ("runs/q", "/abs/runs", "C:/runs", "runs/a:b", f"gs://{BUCKET}/run", None):
    storage.check_location(location)
  monkeypatch.setitem(sys.modules, "gcsfs", None)  # as if not installed
  with pytest.raises(MissingExtraError, match=r"needs gcsfs: pip install 'dlmscale\[gcs\]'"):
    storage.check_location(f"gs://{BUCKET}/run")


def test_path_helpers_keep_the_url():
  assert storage.join("gs://b/run/", "ar", "config.json") == "gs://b/run/ar/config.json"
  assert storage.split("gs://b/run/ar/") == ("gs://b/run", "ar")
  assert storage.split("runs/q/ar") == ("runs/q", "ar")


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_cli_refuses_an_unsupported_scheme_on_one_line_before_any_work(mode, tmp_path,
                                                                      tmp_path_factory):
  args = [f"--config={TINY}"] if mode == "train" else []  # eval: looks for the saved config
  done = subprocess.run([sys.executable, "-m", "dlmscale.main", f"--mode={mode}",
                         "--workdir=s3://bucket/run", *args], cwd=tmp_path,
                        env=cli_env(tmp_path_factory), capture_output=True, text=True, timeout=120)
  assert done.returncode == 2, done.stderr[-2000:]
  assert done.stderr.strip().splitlines() == [
      "error: --workdir=s3://bucket/run: s3:// run directories are not supported (local paths "
      "and gs://BUCKET/path are): use one of those"]
  assert list(tmp_path.iterdir()) == []  # nothing written, no local 's3:' folder
