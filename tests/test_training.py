"""End-to-end training on the tiny config: loss, metrics, TensorBoard, same stream for every
objective, bitwise kill/resume (in-process and through the CLI with SIGTERM), grad accumulation.

In-process runs use the 8 fake CPU devices of conftest. CLI runs are subprocesses started from the
repo root (so `configs.models` imports) with a compilation cache shared by the session's CLI runs.
"""
from __future__ import annotations

import contextlib
import glob
import io
import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from _shared import cli_env, tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.py"
if str(REPO) not in sys.path:  # the config files import `configs.models` from the repo root
  sys.path.insert(0, str(REPO))

from dlmscale import experiment, modes, runner  # noqa: E402
from dlmscale.data import TokenStream  # noqa: E402
from dlmscale.metrics import read_metrics  # noqa: E402


def train_records(workdir) -> dict[int, dict]:
  return {r["step"]: r for r in read_metrics(str(workdir)) if "train/loss" in r}


def tb_scalars(workdir, tag: str) -> dict[int, float]:
  """Reads `tag` from the TensorBoard event files (TFRecord framing around Event protos)."""
  from tensorboardX.proto import event_pb2
  files = glob.glob(os.path.join(workdir, "tb", "events.out.tfevents.*"))
  assert files, f"no TensorBoard event file in {workdir}/tb"
  out = {}
  for path in files:
    data = Path(path).read_bytes()
    i = 0
    while i < len(data):
      (length,) = struct.unpack("<Q", data[i:i + 8])
      event = event_pb2.Event()
      event.ParseFromString(data[i + 12:i + 12 + length])
      i += 12 + length + 4
      for v in event.summary.value:
        if v.tag == tag:
          out[event.step] = v.simple_value
  return out


def assert_params_equal(a, b):
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for path, x, y in zip(jax.tree_util.tree_flatten_with_path(a)[0], leaves_a, leaves_b):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape, path[0]
    assert np.array_equal(x, y), f"param {jax.tree_util.keystr(path[0])} differs"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  """One modes.train of ar and mdm on the tiny config (the uninterrupted reference), keeping the
  Experiments it built (their compiled steps are reused by later tests)."""
  workdir = tmp_path_factory.mktemp("tiny_run")
  cfg = tiny_config()
  built = {}

  def build_and_keep(cfg, objective, devices=None):
    built[objective] = experiment.build_experiment(cfg, objective, devices)
    return built[objective]

  out = io.StringIO()
  with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
    mp.setattr(modes, "build_experiment", build_and_keep)
    results = modes.train(cfg, str(workdir))
  return {"cfg": cfg, "workdir": workdir, "results": results, "stdout": out.getvalue(),
          "exps": built}


@pytest.fixture(scope="module")
def ar_exp(tiny_run):
  """tiny_run's ar Experiment; its step_fn counts calls in exp.calls, so a test can tell how
  many steps a run really executed."""
  exp = tiny_run["exps"]["ar"]
  exp.calls, step_fn = [], exp.step_fn

  def counted(state, tokens):
    exp.calls.append(1)
    return step_fn(state, tokens)

  exp.step_fn = counted
  return exp


def test_train_all_end_to_end(tiny_run):
  cfg, workdir, results = tiny_run["cfg"], tiny_run["workdir"], tiny_run["results"]
  num_steps = cfg.data.total_tokens // (cfg.train.global_batch * cfg.data.seq_len)
  assert [r["objective"] for r in results] == ["ar", "mdm"]
  assert json.loads((workdir / "results.json").read_text()) == json.loads(json.dumps(results))
  for r in results:
    name = r["objective"]
    assert r["steps"] == num_steps
    assert r["tokens_seen"] == num_steps * cfg.train.global_batch * cfg.data.seq_len
    assert r["val_kind"] == ("nll" if name == "ar" else "elbo")
    assert r["val_sequences"] == cfg.eval.max_sequences
    assert math.isfinite(r["val_mean"]) and math.isfinite(r["val_stderr"]) and r["val_stderr"] > 0
    run_dir = workdir / name
    assert json.loads((run_dir / "config.json").read_text())["train"]["lr"] == cfg.train.lr

    # metrics.jsonl: one train record per logged step, finite, then the eval record at the end.
    records = read_metrics(str(run_dir))
    train = train_records(run_dir)
    assert sorted(train) == list(range(cfg.train.log_every, num_steps + 1, cfg.train.log_every))
    losses = [train[s]["train/loss"] for s in sorted(train)]
    assert all(math.isfinite(x) for x in losses)
    assert train[num_steps]["train/tokens_seen"] == r["tokens_seen"]
    evals = [rec for rec in records if "eval/val_mean" in rec]
    assert len(evals) == 1 and evals[0]["step"] == num_steps
    assert evals[0]["eval/val_mean"] == pytest.approx(r["val_mean"], rel=1e-12)
    # Training works: the loss falls well below its start (ln 256 ~ 5.5 for bytes).
    assert np.mean(losses[-2:]) < losses[0] - 0.5, (name, losses)
    assert r["val_mean"] < losses[0] - 0.5, (name, r["val_mean"], losses)

    # TensorBoard holds the same scalars.
    tb = tb_scalars(run_dir, "train/loss")
    assert sorted(tb) == sorted(train)
    for s, v in tb.items():
      assert v == pytest.approx(train[s]["train/loss"], rel=1e-6)

    # Periodic checkpoints, the last keep_checkpoints kept.
    steps = sorted(int(p.name) for p in (run_dir / "checkpoints").iterdir() if p.name.isdigit())
    every = cfg.train.checkpoint_every
    assert steps == list(range(every, num_steps + 1, every))[-cfg.train.keep_checkpoints:]


def test_objectives_share_the_stream(tiny_run):
  cfg, exps = tiny_run["cfg"], tiny_run["exps"]
  assert sorted(exps) == ["ar", "mdm"]
  fp = {name: e.stream.fingerprint() for name, e in exps.items()}
  assert fp["ar"] == fp["mdm"]
  np.testing.assert_array_equal(exps["ar"].stream.global_batch_at(3),
                                exps["mdm"].stream.global_batch_at(3))
  # What train_all printed is that fingerprint, for both objectives.
  printed = dict(re.findall(r"^\[(\w+)\] data: .* stream ([0-9a-f]+)$", tiny_run["stdout"], re.M))
  assert printed == {"ar": fp["ar"][:16], "mdm": fp["ar"][:16]}
  # results.json records the full fingerprint each run trained on.
  recorded = json.loads((tiny_run["workdir"] / "results.json").read_text())
  assert {r["objective"]: r["stream_fingerprint"] for r in recorded} == fp
  data = [r["data"] for r in recorded]
  assert data[0] == data[1] and data[0]["val_split_fingerprint"] == exps["ar"].corpus.val.fingerprint
  # ...and it identifies the stream: another data seed gives another fingerprint.
  other = TokenStream(exps["ar"].corpus.train, unique_tokens=cfg.data.unique_tokens,
                      total_tokens=cfg.data.total_tokens, global_batch=cfg.train.global_batch,
                      seed=cfg.data.seed + 1)
  assert other.fingerprint() != fp["ar"]


def test_stop_and_resume_is_bitwise_equal(tiny_run, ar_exp, tmp_path):
  """A run stopped between checkpoints and resumed equals the uninterrupted tiny_run bitwise."""
  cfg, ref_dir, exp, calls = tiny_run["cfg"], tiny_run["workdir"] / "ar", ar_exp, ar_exp.calls
  ref = next(r for r in tiny_run["results"] if r["objective"] == "ar")
  num_steps = exp.stream.num_steps
  stop = 6  # between the checkpoints at 4 and 8, on a logging step
  assert stop % cfg.train.checkpoint_every and not stop % cfg.train.log_every
  workdir = tmp_path / "ar"

  calls.clear()
  first = runner.run_training(exp, str(workdir), stop_after=stop)
  assert len(calls) == stop and first["steps"] == stop and "val_mean" not in first
  ckpts = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert ckpts == [4, stop]
  head = (workdir / "metrics.jsonl").read_text()

  calls.clear()
  second = runner.run_training(exp, str(workdir))
  assert len(calls) == num_steps - stop, "the second run did not resume from the checkpoint"
  assert (workdir / "metrics.jsonl").read_text().startswith(head)

  params, step = experiment.restore_params(exp, str(workdir))
  ref_params, ref_step = experiment.restore_params(exp, str(ref_dir))
  assert step == ref_step == num_steps
  assert_params_equal(params, ref_params)
  assert second["val_mean"] == ref["val_mean"]

  # metrics.jsonl step for step: every training metric but the wall-clock throughput.
  got, want = read_metrics(str(workdir)), read_metrics(str(ref_dir))
  strip = lambda recs: [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in recs]
  assert strip(got) == strip(want)


def test_rerun_of_a_finished_run_changes_nothing(tiny_run, ar_exp, tmp_path):
  """Running a finished run again trains no step, validates again, and leaves metrics.jsonl as it
  was (one eval record, not two) and the checkpoints untouched."""
  ref_dir, workdir, exp = tiny_run["workdir"] / "ar", tmp_path / "ar", ar_exp
  ref = next(r for r in tiny_run["results"] if r["objective"] == "ar")
  shutil.copytree(ref_dir, workdir)
  exp.calls.clear()
  result = runner.run_training(exp, str(workdir))
  assert exp.calls == []
  assert result["val_mean"] == ref["val_mean"]
  assert (workdir / "metrics.jsonl").read_text() == (ref_dir / "metrics.jsonl").read_text()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == sorted(
      p.name for p in (ref_dir / "checkpoints").iterdir())


def test_sigterm_while_logging_saves_the_step_it_stops_at(tiny_run, ar_exp, tmp_path,
                                                          monkeypatch):
  """SIGTERM that lands after a step decided not to save (here: while it is being logged) must
  still end in a saved checkpoint at the step the run reports; resuming then finishes bitwise, and
  metrics.jsonl equals the uninterrupted run's (the split window's steps travel with the
  checkpoint), wall-clock fields aside."""
  ref_dir, workdir, exp = tiny_run["workdir"] / "ar", tmp_path / "ar", ar_exp
  shutil.copytree(ref_dir, workdir)
  for step in ("12", "16"):  # a run whose latest checkpoint is step 8
    shutil.rmtree(workdir / "checkpoints" / step)
  log_window = runner._log_window

  def log_then_sigterm(exp_, writer, pending, start, step, *rest):
    log_window(exp_, writer, pending, start, step, *rest)
    if step == 10:
      os.kill(os.getpid(), signal.SIGTERM)

  monkeypatch.setattr(runner, "_log_window", log_then_sigterm)
  # Should the run not catch SIGTERM, this handler (not the default) gets it: pytest survives.
  previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("the run did not catch SIGTERM"))
  try:
    exp.calls.clear()
    with pytest.raises(runner.Preempted, match=r"saved a checkpoint at step 11 "):
      runner.run_training(exp, str(workdir))
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert len(exp.calls) == 3  # resumed at 8, stopped after 11
  ckpts = sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())
  assert ckpts == [8, 11]

  monkeypatch.setattr(runner, "_log_window", log_window)
  exp.calls.clear()
  runner.run_training(exp, str(workdir))
  assert len(exp.calls) == exp.stream.num_steps - 11
  params, _ = experiment.restore_params(exp, str(workdir))
  ref_params, _ = experiment.restore_params(exp, str(ref_dir))
  assert_params_equal(params, ref_params)
  wall_clock = ("train/tokens_per_s",)
  strip = lambda recs: [{k: v for k, v in r.items() if k not in wall_clock} for r in recs]
  got, want = read_metrics(str(workdir)), read_metrics(str(ref_dir))
  assert [r["step"] for r in got] == [r["step"] for r in want]
  assert strip(got) == strip(want)


def test_plain_log_lines_are_fetched_one_step_behind(tiny_run, ar_exp, tmp_path, monkeypatch):
  """A log step that saves nothing is written after the next step is dispatched (the device
  never idles while the host fetches metrics); a checkpoint step is written before the next
  dispatch; the records equal the reference run's."""
  exp, events, step_fn = ar_exp, [], ar_exp.step_fn
  log_window = runner._log_window

  def dispatch(state, tokens):
    events.append(("dispatch", sum(e[0] == "dispatch" for e in events)))
    return step_fn(state, tokens)

  def log(exp_, writer, values, elapsed, step, *rest):
    events.append(("log", step))
    assert len(values) == 2 and elapsed > 0  # log_every=2: a whole window, timed
    log_window(exp_, writer, values, elapsed, step, *rest)

  monkeypatch.setattr(exp, "step_fn", dispatch)
  monkeypatch.setattr(runner, "_log_window", log)
  runner.run_training(exp, str(tmp_path / "ar"), stop_after=10)
  # Steps 2, 6 and 10's windows: logged after dispatching steps 3 and 7 (0-based indices 2, 6);
  # 4 and 8 save a checkpoint, so they are logged before the next dispatch; 10 is the end.
  logged_after = {step: events[events.index(("log", step)) - 1] for step in (2, 4, 6, 8, 10)}
  assert logged_after == {2: ("dispatch", 2), 4: ("dispatch", 3), 6: ("dispatch", 6),
                          8: ("dispatch", 7), 10: ("dispatch", 9)}
  strip = lambda recs: [{k: v for k, v in r.items() if k != "train/tokens_per_s"} for r in recs]
  want = [r for r in read_metrics(str(tiny_run["workdir"] / "ar")) if r["step"] <= 10
          and "train/loss" in r]
  assert strip(read_metrics(str(tmp_path / "ar"))) == strip(want)


def test_grad_accum_matches_one_big_batch(tiny_run, tmp_path):
  """grad_accum=2 through the runner trains like grad_accum=1 (same data, same math)."""
  cfg = tiny_config(**{"train.grad_accum": 2})
  exp = experiment.build_experiment(cfg, "ar")
  stop = 8
  runner.run_training(exp, str(tmp_path / "ar"), stop_after=stop)
  got, want = train_records(tmp_path / "ar"), train_records(tiny_run["workdir"] / "ar")
  assert sorted(got) == [s for s in sorted(want) if s <= stop]
  for s in sorted(got):
    for key in ("train/loss", "train/accuracy", "train/grad_norm", "train/lr"):
      assert got[s][key] == pytest.approx(want[s][key], rel=1e-4, abs=1e-6), (s, key)


# ---- SIGTERM through the CLI ---------------------------------------------------------------

# Long enough (100 steps) that the run is still training when the test sends SIGTERM. A constant
# schedule keeps the compiled step independent of the step count, so the compilation cache is
# shared with the CLI tests in test_cli.py.
SIGTERM_STEPS = 100
SIGTERM_ARGS = ["--config.objectives=('ar',)", "--config.train.schedule=constant",
                f"--config.data.total_tokens={SIGTERM_STEPS * 16 * 32}",
                "--config.train.log_every=1", "--config.train.checkpoint_every=50"]


def cli_command(workdir, *args) -> list[str]:
  return [sys.executable, "-m", "dlmscale.main", f"--config={TINY}", f"--workdir={workdir}",
          *args]


def test_sigterm_saves_and_rerun_resumes_bitwise(tmp_path, tmp_path_factory):
  env = cli_env(tmp_path_factory)
  ref_dir, workdir = tmp_path / "ref", tmp_path / "run"
  metrics = workdir / "ar" / "metrics.jsonl"
  # The uninterrupted reference runs alongside the run that gets interrupted.
  with open(tmp_path / "ref.log", "w") as ref_log:
    ref = subprocess.Popen(cli_command(ref_dir, *SIGTERM_ARGS), cwd=REPO, env=env,
                           stdout=ref_log, stderr=subprocess.STDOUT)
  proc = subprocess.Popen(cli_command(workdir, *SIGTERM_ARGS), cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
      if metrics.exists() and len(metrics.read_text().splitlines()) >= 3:
        break
      time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + (
        proc.communicate()[1][-3000:])
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert ref.wait(timeout=300) == 0, (tmp_path / "ref.log").read_text()[-3000:]
  finally:
    for p in (proc, ref):
      if p.poll() is None:
        p.kill()
        p.wait()
  assert proc.returncode == 143, stderr[-3000:]
  last = [line for line in stderr.splitlines() if line.strip()][-1]
  match = re.search(r"SIGTERM received, saved a checkpoint at step (\d+) ", last)
  assert match, last
  stopped = int(match.group(1))
  assert 3 <= stopped < SIGTERM_STEPS
  ckpts = sorted(int(p.name) for p in (workdir / "ar" / "checkpoints").iterdir()
                 if p.name.isdigit())
  assert ckpts[-1] == stopped
  assert max(r["step"] for r in read_metrics(str(workdir / "ar"))) == stopped
  assert not (workdir / "results.json").exists()

  again = subprocess.run(cli_command(workdir, *SIGTERM_ARGS), cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
  assert again.returncode == 0, again.stderr[-3000:]
  assert f"resumed at step {stopped}" in again.stderr

  cfg = tiny_config(**{"objectives": ("ar",), "train.schedule": "constant",
                       "data.total_tokens": SIGTERM_STEPS * 16 * 32})
  exp = experiment.build_experiment(cfg, "ar")
  params, step = experiment.restore_params(exp, str(workdir / "ar"))
  ref_params, ref_step = experiment.restore_params(exp, str(ref_dir / "ar"))
  assert step == ref_step == SIGTERM_STEPS
  assert_params_equal(params, ref_params)
  got, want = train_records(workdir / "ar"), train_records(ref_dir / "ar")
  assert sorted(got) == sorted(want) == list(range(1, SIGTERM_STEPS + 1))
  assert [got[s]["train/loss"] for s in got] == [want[s]["train/loss"] for s in want]
  results = [json.loads((d / "results.json").read_text())[0] for d in (workdir, ref_dir)]
  assert results[0]["val_mean"] == results[1]["val_mean"]


def test_overflowed_parameters_are_never_checkpointed():
  from dlmscale.errors import NonFiniteLossError
  params = {"a": np.ones((3,), np.float32), "b": {"c": np.ones((2, 2), np.float32)}}
  runner._check_params_finite(params, 5, "ar")  # finite: no error
  params["b"]["c"][1, 0] = np.inf
  with pytest.raises(NonFiniteLossError, match="non-finite parameters after step 5"):
    runner._check_params_finite(params, 5, "ar")
