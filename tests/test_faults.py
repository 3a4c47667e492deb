"""Fault injection, in process: every kind of checkpoint damage ends in a one-line error naming the
step (or, where the bytes hit nothing that is read, in the same result), never in a silent different
run; a fallback only when asked; elastic resume on fewer devices; SIGTERM during final validation;
other data refused unless allowed; provenance of every start."""
import contextlib
import dataclasses
import glob
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal

import jax
import numpy as np
import pytest

from dlmscale import experiment, modes, runner
from dlmscale.errors import CheckpointError, ConfigError
from dlmscale.metrics import read_metrics

from _shared import tiny_config

WALL_CLOCK = ("train/tokens_per_s",)


def _config(**overrides):
  return tiny_config(**{"objectives": ("ar",), **overrides})


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """An uninterrupted 16-step run (checkpoints 8, 12, 16) and the Experiment that trained it."""
  exp = experiment.build_experiment(_config(), "ar")
  workdir = tmp_path_factory.mktemp("faults") / "ref"
  with contextlib.redirect_stdout(io.StringIO()):
    result = runner.run_training(exp, str(workdir))
  return {"exp": exp, "dir": workdir, "result": result}


def _copy(ref, tmp_path, drop=()):
  workdir = tmp_path / "run"
  shutil.copytree(ref["dir"], workdir)
  for step in drop:
    shutil.rmtree(workdir / "checkpoints" / str(step))
  return workdir


def _digest(root):
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          for p in sorted(root.rglob("*")) if p.is_file()}


def _metrics(workdir):
  return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in read_metrics(str(workdir))]


def _params_equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _train(exp, workdir):
  with contextlib.redirect_stdout(io.StringIO()):
    return runner.run_training(exp, str(workdir))


# ---- damage ----------------------------------------------------------------------------------

def _flip(path, count, seed=0):
  data = bytearray(path.read_bytes())
  rng = random.Random(seed)
  for i in range(count):
    k = len(data) // 2 if count == 1 else rng.randrange(len(data))
    data[k] ^= 0xFF
  path.write_bytes(bytes(data))


def _array_files(step_dir):
  return sorted((p for p in step_dir.glob("state/ocdbt.process_0/d/*")),
                key=lambda p: p.stat().st_size)


DAMAGE = {  # kind -> (damage(step_dir), must it fail?)
    "flip 1 byte of the largest array file": (lambda d: _flip(_array_files(d)[-1], 1), True),
    "flip 16 bytes of the largest array file": (lambda d: _flip(_array_files(d)[-1], 16), True),
    "truncate the largest array file": (
        lambda d: (lambda p: p.write_bytes(p.read_bytes()[:p.stat().st_size // 2]))(
            _array_files(d)[-1]), True),
    "delete the largest array file": (lambda d: _array_files(d)[-1].unlink(), True),
    "zero the largest array file": (
        lambda d: (lambda p: p.write_bytes(bytes(p.stat().st_size)))(_array_files(d)[-1]), True),
    "flip a byte of the data state (checksums, next step)": (
        lambda d: _flip(d / "data" / "metadata", 1), True),
    "delete the data state": (lambda d: (d / "data" / "metadata").unlink(), True),
    "flip a byte of the tree metadata": (lambda d: _flip(d / "state" / "_METADATA", 1), True),
    "flip a byte of the OCDBT manifest": (lambda d: _flip(d / "state" / "manifest.ocdbt", 1), True),
    "empty the state directory": (
        lambda d: (shutil.rmtree(d / "state"), (d / "state").mkdir()), True),
    # These hit bytes a restore may not read (index nodes, sharding hints): an error, or the
    # same state (the checksums prove it) and the same result.
    "flip a byte of the smallest array file": (lambda d: _flip(_array_files(d)[0], 1), False),
    "flip a byte of the per-process manifest": (
        lambda d: _flip(d / "state" / "ocdbt.process_0" / "manifest.ocdbt", 1), False),
    "delete the sharding file": (lambda d: (d / "state" / "_sharding").unlink(), False),
}


@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_checkpoint_is_an_error_naming_the_step_or_harmless(ref, tmp_path, kind):
  damage, must_fail = DAMAGE[kind]
  workdir = _copy(ref, tmp_path)
  damage(workdir / "checkpoints" / "16")
  before = _digest(workdir / "checkpoints")
  try:
    result = _train(ref["exp"], workdir)
  except CheckpointError as e:
    message = str(e)
    assert "checkpoint step 16" in message and ("damaged" in message or "unreadable" in message)
    assert "\n" not in message and "restore_fallback=true to resume from step 12" in message
    assert _digest(workdir / "checkpoints") == before  # nothing touched, nothing deleted
    return
  assert not must_fail, f"{kind}: restored without error"
  assert result["val_mean"] == ref["result"]["val_mean"]
  params, _ = experiment.restore_params(ref["exp"], str(workdir))
  ref_params, _ = experiment.restore_params(ref["exp"], str(ref["dir"]))
  _params_equal(params, ref_params)


def test_a_flip_that_still_decodes_is_caught_by_the_checksums(ref, tmp_path):
  """The defect this guards against: Orbax restored such a file without error and the run went on
  from an altered optimizer state."""
  workdir = _copy(ref, tmp_path)
  _flip(_array_files(workdir / "checkpoints" / "16")[-1], 1)
  with pytest.raises(CheckpointError, match=r"step 16 .* is damaged: .* differ from the checksums"):
    _train(ref["exp"], workdir)


def test_fallback_only_when_asked_then_moves_the_step_aside_and_finishes_equal(ref, tmp_path,
                                                                               caplog):
  workdir = _copy(ref, tmp_path, drop=(16,))  # stopped after 12: resuming trains 4 more steps
  _flip(_array_files(workdir / "checkpoints" / "12")[-1], 1)
  with pytest.raises(CheckpointError, match="restore_fallback=true to resume from step 8"):
    _train(ref["exp"], workdir)
  cfg = _config(**{"train.restore_fallback": True})
  exp = dataclasses.replace(ref["exp"], cfg=cfg)
  with caplog.at_level(logging.WARNING, logger="dlmscale"):
    result = _train(exp, workdir)
  assert "checkpoint step 12" in caplog.text and "falling back" in caplog.text
  assert (workdir / "checkpoints-damaged" / "12").is_dir()
  assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["12", "16", "8"]
  assert result["val_mean"] == ref["result"]["val_mean"]
  params, _ = experiment.restore_params(exp, str(workdir))
  ref_params, _ = experiment.restore_params(exp, str(ref["dir"]))
  _params_equal(params, ref_params)
  assert _metrics(workdir) == _metrics(ref["dir"])


# ---- elastic resume, SIGTERM outside the loop, other data, provenance -------------------------

def test_resume_on_four_devices_of_a_run_saved_on_eight(ref, tmp_path):
  """Checksums verify across meshes; the rest of the run differs only by summation order."""
  workdir = _copy(ref, tmp_path, drop=(12, 16))
  exp4 = experiment.build_experiment(_config(), "ar", devices=jax.devices()[:4])
  assert exp4.mesh.size == 4 and ref["exp"].mesh.size == 8
  result = _train(exp4, workdir)
  assert result["val_mean"] == pytest.approx(ref["result"]["val_mean"], rel=1e-4)
  got, want = _metrics(workdir), _metrics(ref["dir"])
  assert [r["step"] for r in got] == [r["step"] for r in want]
  for a, b in zip(got, want):
    for k in ("train/loss", "train/grad_norm"):
      if k in b:
        assert a[k] == pytest.approx(b[k], rel=1e-4), (k, a["step"])
  params, _ = experiment.restore_params(exp4, str(workdir))
  ref_params, _ = experiment.restore_params(ref["exp"], str(ref["dir"]))
  for x, y in zip(jax.tree.leaves(params), jax.tree.leaves(ref_params)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=2e-4, rtol=1e-3)


def test_sigterm_during_final_validation_stops_with_a_message_and_a_rerun_validates(
    ref, tmp_path, monkeypatch):
  workdir = _copy(ref, tmp_path, drop=(16,))
  evaluate = runner.evaluate

  def evaluate_then_sigterm(exp, params, step):
    os.kill(os.getpid(), signal.SIGTERM)
    return evaluate(exp, params, step)

  monkeypatch.setattr(runner, "evaluate", evaluate_then_sigterm)
  previous = signal.signal(signal.SIGTERM, lambda *_: pytest.fail("the run did not catch SIGTERM"))
  try:
    with pytest.raises(runner.Preempted, match=r"during final validation of ar .*step 16 is saved"):
      _train(ref["exp"], workdir)
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert (workdir / "checkpoints" / "16").is_dir()
  monkeypatch.setattr(runner, "evaluate", evaluate)
  result = _train(ref["exp"], workdir)
  assert result["val_mean"] == ref["result"]["val_mean"]
  assert _metrics(workdir) == _metrics(ref["dir"])


def _rewrite_data_state(step_dir, **changes):
  path = step_dir / "data" / "metadata"
  data = json.loads(path.read_text())
  data.update(changes)
  path.write_text(json.dumps(data))


def test_a_checkpoint_of_other_data_is_refused_unless_allowed(ref, tmp_path, caplog):
  workdir = _copy(ref, tmp_path, drop=(16,))
  _rewrite_data_state(workdir / "checkpoints" / "12", train_split_fingerprint="0" * 64)
  with pytest.raises(CheckpointError, match="written for other data .*train_split_fingerprint"):
    _train(ref["exp"], workdir)
  exp = dataclasses.replace(ref["exp"], cfg=_config(**{"train.allow_data_change": True}))
  with caplog.at_level(logging.WARNING, logger="dlmscale"):
    _train(exp, workdir)
  assert "continuing on this data" in caplog.text


def test_resizing_the_model_without_config_json_names_the_shapes_and_writes_nothing(ref,
                                                                                   tmp_path):
  workdir = _copy(ref, tmp_path)
  (workdir / "config.json").unlink()
  before = _digest(workdir)
  exp = experiment.build_experiment(_config(**{"model.d_ff": 96}), "ar")
  with pytest.raises(CheckpointError, match=r"does not match this config's model/optimizer shapes"
                                            r" \(.*checkpoint \(.*\), config \("):
    _train(exp, workdir)
  assert _digest(workdir) == before
  # Not damage: even with the fallback on, nothing is moved aside.
  exp = dataclasses.replace(exp, cfg=_config(**{"model.d_ff": 96, "train.restore_fallback": True}))
  with pytest.raises(CheckpointError, match="does not match this config"):
    _train(exp, workdir)
  assert _digest(workdir) == before


def test_provenance_records_every_start(ref, tmp_path):
  workdir = _copy(ref, tmp_path, drop=(16,))
  _train(ref["exp"], workdir)
  starts = json.loads((workdir / "provenance.json").read_text())["starts"]
  assert [s["start_step"] for s in starts] == [0, 12]
  for s in starts:
    assert s["packages"]["jax"] == jax.__version__
    assert s["devices"]["device_count"] == 8 and s["mesh"]["data"] == 8
    assert s["data"]["stream_fingerprint"] == ref["exp"].stream.fingerprint()
    assert s["config_sha256"] == starts[0]["config_sha256"]


@pytest.mark.parametrize("override,message", [
    ({"train.lr": float("nan")}, "train.lr must be a finite number"),
    ({"objective_args.mdm.weighting": "foo"}, "unknown objective_args.mdm.weighting 'foo'"),
    ({"model.dropout_mlp": 1.5}, "model.dropout_mlp must be in [0, 1)"),
    ({"sample.prompts": ("",)}, "sample.prompts holds an empty prompt"),
])
def test_bad_values_fail_before_anything_is_written(tmp_path, override, message):
  """A corrected rerun in the same workdir is then a fresh start, not 'a different config'."""
  workdir = tmp_path / "run"
  with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
    modes.train(_config(**override), str(workdir))
  assert not glob.glob(str(workdir / "**" / "*"), recursive=True)
