"""Observability: progress bars and closing lines (eval, prepare), TensorBoard hparams, the W&B
mirror in offline mode, profiler traces of a step window, and the persistent compilation cache
across fresh processes."""
import glob
import gzip
import json
import logging
import os
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlmscale
from dlmscale import compilation_cache, metrics, parallel, profiling, progress
from dlmscale.config import default_config, validate
from dlmscale.data import get_tokenizer, prepare
from dlmscale.errors import ConfigError
from dlmscale.evaluation import multiple_choice
from dlmscale.evaluation.loaded import LoadedModel
from dlmscale.evaluation.scorer import Scorer
from dlmscale.evaluation.tasks.base import Task, choice_example
from dlmscale.evaluation.validation import evaluate_validation

from _shared import random_params, tiny_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def logs(caplog):
  caplog.set_level(logging.INFO, logger="dlmscale")
  return caplog


def closing_lines(caplog, desc):
  return [r.getMessage() for r in caplog.records if r.getMessage().startswith(f"[{desc}] ")]


@pytest.fixture(scope="module")
def tiny_lm():
  """A 1-layer AR model with random weights on every device, byte tokens, a 32-token window."""
  model = dlmscale.build_model(dlmscale.ModelConfig(
      vocab_size=320, num_layers=1, d_model=16, num_heads=2, d_ff=32, dtype="float32"))
  rules = tuple(parallel.DEFAULT_RULES)
  return LoadedModel(model=model, params=random_params(model, seed=2), tokenizer=get_tokenizer(
      "byte"), kind="ar", objective="ar", mesh=parallel.make_mesh({"data": -1}), rules=rules,
      seq_len=32, step=0, cfg=None)


# --- progress -------------------------------------------------------------------------------------

def test_log_display_reports_count_rate_and_eta(monkeypatch, logs):
  monkeypatch.setenv(progress.ENV, "log")
  monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)
  with progress.Progress("work", 4, "req", enabled=True) as bar:
    bar.update(1)
    bar.update(3)
    bar.summary = "all good"
  lines = [r.getMessage() for r in logs.records]
  assert lines[0].startswith("[work] 1/4 req (25%), ") and ", eta " in lines[0]
  assert lines[1].startswith("[work] 4/4 req (100%), ") and lines[1].endswith("eta 0.0s")
  assert lines[2].startswith("[work] 4 req in ") and lines[2].endswith(": all good")
  assert len(lines) == 3


def test_off_keeps_only_the_closing_line_and_a_failure_logs_none(monkeypatch, logs, capsys):
  monkeypatch.setenv(progress.ENV, "off")
  with progress.Progress("quiet", 2, "doc", enabled=True) as bar:
    bar.update(2)
  with pytest.raises(RuntimeError):
    with progress.Progress("broken", 2, "doc", enabled=True):
      raise RuntimeError("boom")
  assert [r.getMessage().split(" in ")[0] for r in logs.records] == ["[quiet] 2 doc"]
  assert capsys.readouterr().err == ""
  monkeypatch.setenv(progress.ENV, "loud")
  with pytest.raises(ConfigError, match="DLMSCALE_PROGRESS='loud'"):
    progress.display()


def test_validation_shows_a_bar_and_logs_its_result(tiny_lm, monkeypatch, logs, capsys):
  monkeypatch.setenv(progress.ENV, "bar")
  val_MxL = np.random.default_rng(0).integers(0, 256, (24, 32)).astype(np.int32)
  out = evaluate_validation(tiny_lm.model, tiny_lm.params, val_MxL, "ar", mesh=tiny_lm.mesh,
                            rules=tiny_lm.rules, batch_size=8, num_samples=1, mask_id=0)
  err = capsys.readouterr().err
  assert "validation nll" in err and "/24" in err  # tqdm's bar, with its total
  (line,) = closing_lines(logs, "validation nll")
  assert line.startswith("[validation nll] 24 seq in ")
  assert line.endswith(f": {out['mean']:.4f} +- {out['stderr']:.4f} nats/token")


def test_a_task_shows_a_bar_and_logs_one_line_with_its_scores(tiny_lm, monkeypatch, logs,
                                                              capsys):
  monkeypatch.setenv(progress.ENV, "bar")
  task = Task("toy", "multiple_choice", (
      choice_example("def f(x):", ["return x", "}}}"], gold=0),
      choice_example("import", ["os", "((("], gold=0),
      choice_example("x = 1 +", ["2", "qq"], gold=1)))
  m = multiple_choice.score_task(Scorer(tiny_lm, batch_size=8), task)
  assert "toy" in capsys.readouterr().err
  (line,) = closing_lines(logs, "toy")
  assert line.startswith("[toy] 6 req in ")
  assert line.endswith(f": acc {m['acc']:.4f} +- {m['acc_stderr']:.4f}, acc_norm "
                       f"{m['acc_norm']:.4f} +- {m['acc_norm_stderr']:.4f} (3 examples, 0-shot)")


def test_prepare_shows_a_bar_and_counts_every_document(tmp_path, monkeypatch, logs, capsys):
  monkeypatch.setenv(progress.ENV, "bar")
  for i in range(12):
    (tmp_path / "corpus" / f"g{i}").mkdir(parents=True)
    (tmp_path / "corpus" / f"g{i}" / "a.txt").write_text(f"document {i} " * (20 + i))
  d = default_config().data
  d.update(sources=f"files:{tmp_path / 'corpus'}", seq_len=16, val_fraction=0.25)
  meta = prepare(d, str(tmp_path / "prepared"))
  assert "prepare" in capsys.readouterr().err
  (line,) = closing_lines(logs, "prepare")
  assert line.startswith("[prepare] 12 doc in ")
  assert line.endswith(f": {meta['num_text_bytes'] / 1e6:.1f} MB of text tokenized")


# --- TensorBoard hparams and the W&B mirror -------------------------------------------------------

def _tfrecords(path):
  """The records of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
  data, pos = open(path, "rb").read(), 0
  while pos < len(data):
    (n,) = struct.unpack("<Q", data[pos:pos + 8])
    yield data[pos + 12:pos + 12 + n]
    pos += 16 + n


def _tb_events(tb_dir):
  from tensorboardX.proto.event_pb2 import Event
  from tensorboardX.proto.plugin_hparams_pb2 import HParamsPluginData
  hparams, scalars = {}, []
  for path in sorted(glob.glob(os.path.join(tb_dir, "events.out.tfevents.*"))):
    for raw in _tfrecords(path):
      event = Event.FromString(raw)
      for v in event.summary.value:
        if v.tag == "_hparams_/session_start_info":
          info = HParamsPluginData.FromString(v.metadata.plugin_data.content).session_start_info
          hparams = {k: getattr(x, x.WhichOneof("kind")) for k, x in info.hparams.items()}
        else:
          scalars.append((event.step, v.tag, v.simple_value))
  return hparams, scalars


def _write_some(writer):
  for step, loss in ((2, 1.5), (4, 1.25)):
    writer.write(step, {"loss": loss, "tokens_per_s": 100.0 * step})
  writer.write(4, {"val_mean": 2.5, "hellaswag/acc": 0.25}, prefix="eval")
  writer.close()


def test_tensorboard_holds_the_run_config_as_hparams(tmp_path):
  cfg = tiny_config()
  hparams = metrics.run_hparams(cfg, "mdm")
  assert hparams["objective"] == "mdm" and hparams["train.lr"] == cfg.train.lr
  assert hparams["data.seq_len"] == 32 and hparams["model.qk_norm"] is True
  assert "objective_args.mdm.weighting" in hparams and not any(
      k.startswith(("objective_args.ar.", "rules", "objectives")) for k in hparams)
  assert hparams["sample.prompts"] == json.dumps(list(cfg.sample.prompts))
  _write_some(metrics.MetricsWriter(str(tmp_path), hparams=hparams))
  got, scalars = _tb_events(str(tmp_path / "tb"))
  assert got == {k: (float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v)
                 for k, v in hparams.items()}
  records = metrics.read_metrics(str(tmp_path))
  assert sorted(scalars) == sorted((r["step"], k, pytest.approx(v)) for r in records
                                   for k, v in r.items() if k != "step")


def _wandb_records(path):
  """The records of a W&B transaction log (.wandb): a 7-byte header, then 32 KiB blocks of
  chunks (crc, length, type: 1 full, 2 first, 3 middle, 4 last) holding protobuf Records."""
  from wandb.proto import wandb_internal_pb2
  data, block = open(path, "rb").read(), 32768
  assert data[:4] == b":W&B"
  pos, pending = 7, b""
  while pos + 7 <= len(data):
    if block - pos % block < 7:  # a block's tail too short for a chunk header is padding
      pos += block - pos % block
      continue
    (n,), kind = struct.unpack("<H", data[pos + 4:pos + 6]), data[pos + 6]
    if kind == 0:
      break
    pending += data[pos + 7:pos + 7 + n]
    pos += 7 + n
    if kind in (1, 4):
      yield wandb_internal_pb2.Record.FromString(pending)
      pending = b""


def _finished_wandb_records(path, timeout_s=60.0):
  """The records once the run's exit record is on disk: W&B's writer process may still be
  flushing the log when finish() returns."""
  deadline = time.monotonic() + timeout_s
  while True:
    records = list(_wandb_records(path))
    if any(r.WhichOneof("record_type") == "exit" for r in records) or \
        time.monotonic() > deadline:
      return records
    time.sleep(0.2)


def test_wandb_offline_run_mirrors_metrics_jsonl(tmp_path, monkeypatch):
  pytest.importorskip("wandb", reason="the wandb extra is not installed")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_SILENT", "true")
  workdir = tmp_path / "study" / "mdm"
  hparams = metrics.run_hparams(tiny_config(), "mdm")
  _write_some(metrics.MetricsWriter(str(workdir), hparams=hparams, wandb_project="dlmscale-test"))
  # A resumed run is the same W&B run (its id comes from the workdir).
  resumed = metrics.MetricsWriter(str(workdir), wandb_project="dlmscale-test")
  resumed.write(6, {"loss": 1.0})
  resumed.close()
  runs = sorted(glob.glob(str(workdir / "wandb" / "offline-run-*" / "run-*.wandb")))
  assert len(runs) == 2 and len({os.path.basename(r) for r in runs}) == 1
  history, starts = {}, []
  for path in runs:
    for record in _finished_wandb_records(path):
      kind = record.WhichOneof("record_type")
      if kind == "history":
        items = {i.key or "/".join(i.nested_key): json.loads(i.value_json)
                 for i in record.history.item}
        history[record.history.step.num] = {k: v for k, v in items.items()
                                            if not k.startswith("_")}
      elif kind == "run":
        starts.append((record.run.start_time.ToNanoseconds(), record.run))
  # The first start carries the config. Directory names do not order the two: a resume in the
  # same second gets "<name>-1", which sorts before "<name>".
  assert len(starts) == 2 and starts[0][0] != starts[1][0]
  run = min(starts, key=lambda s: s[0])[1]
  expected = {}  # W&B keeps one row per step: step 4's train and eval records are merged
  for r in metrics.read_metrics(str(workdir)):
    expected.setdefault(r["step"], {}).update({k: v for k, v in r.items() if k != "step"})
  assert history == expected and sorted(expected) == [2, 4, 6] and len(expected[4]) == 4
  assert (run.project, run.run_group, run.display_name) == ("dlmscale-test", "study",
                                                           "study/mdm")
  config = {u.key: json.loads(u.value_json) for u in run.config.update}
  assert config["train.lr"] == hparams["train.lr"] and config["objective"] == "mdm"


# --- profiling ------------------------------------------------------------------------------------

def test_profile_window_is_validated():
  assert profiling.parse_window("") is None and profiling.parse_window(" 3:7 ") == (3, 7)
  for bad in ("7:3", "3", "a:b", "-1:2", "2:2"):
    with pytest.raises(ConfigError, match="train.profile_steps"):
      profiling.parse_window(bad)
  cfg = tiny_config()
  cfg.train.profile_steps = "5"
  with pytest.raises(ConfigError, match="START:END"):
    validate(cfg)


def test_profiler_traces_exactly_the_window(tmp_path):
  @jax.jit
  def observed_step(x_N):
    return x_N * 0.5 + 1.0

  x_N = observed_step(jnp.ones(8))  # compiled outside the trace
  with profiling.StepProfiler("2:4", str(tmp_path)) as profiler:
    for step in range(6):
      profiler.step(step, x_N)
      assert profiler.active == (2 <= step < 4)
      x_N = observed_step(x_N)
  (run,) = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*"))
  assert glob.glob(os.path.join(run, "*.xplane.pb"))  # TensorBoard's profile plugin reads this
  with gzip.open(os.path.join(run, "perfetto_trace.json.gz")) as f:  # Perfetto reads this
    events = json.load(f)["traceEvents"]
  spans = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                 if e.get("name") == "PjitFunction(observed_step)" and e.get("ph") == "X")
  calls, end = 0, -1.0
  for start, stop in spans:  # a call shows as nested spans of the same name: count outer ones
    calls, end = calls + (start >= end), max(end, stop)
  assert spans and calls == 2  # steps 2 and 3


# --- the persistent compilation cache -------------------------------------------------------------

def test_cache_dir_precedence(monkeypatch, tmp_path):
  for name in (compilation_cache.ENV, "JAX_COMPILATION_CACHE_DIR", "XDG_CACHE_HOME"):
    monkeypatch.delenv(name, raising=False)
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compilation_cache.cache_dir() == str(tmp_path / "home" / ".cache" / "dlmscale" /
                                              "jax_cache")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation_cache.cache_dir() == str(tmp_path / "xdg" / "dlmscale" / "jax_cache")
  monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "jax"))
  assert compilation_cache.cache_dir() == str(tmp_path / "jax")
  monkeypatch.setenv(compilation_cache.ENV, str(tmp_path / "mine"))
  assert compilation_cache.cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv(compilation_cache.ENV, "gs://bucket/jax_cache")
  assert compilation_cache.cache_dir() == "gs://bucket/jax_cache"
  for off in ("off", "0", "None"):
    monkeypatch.setenv(compilation_cache.ENV, off)
    assert compilation_cache.cache_dir() is None


_CACHE_PROBE = """
import jax, jax.numpy as jnp
from dlmscale import compilation_cache
events = []
jax.monitoring.register_event_listener(lambda event, **kw: events.append(event))
path = compilation_cache.enable()
f = jax.jit(lambda x_N: jnp.cumsum(jnp.sin(x_N) ** 2) @ jnp.cos(x_N))
f(jnp.arange(64.0)).block_until_ready()
print(path, sum(e.endswith("/cache_hits") for e in events),
      sum(e.endswith("/cache_misses") for e in events))
"""


def test_a_second_fresh_process_loads_its_programs_from_the_cache(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  env[compilation_cache.ENV] = str(tmp_path / "cache")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)

  def probe():
    done = subprocess.run([sys.executable, "-c", _CACHE_PROBE], env=env, capture_output=True,
                          text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-2000:]
    path, hits, misses = done.stdout.split()[-3:]
    return path, int(hits), int(misses)

  path, hits, compiled = probe()
  assert (path, hits) == (str(tmp_path / "cache"), 0) and compiled >= 1
  assert len(os.listdir(tmp_path / "cache")) >= compiled
  assert probe() == (path, compiled, 0)  # every program loaded, none compiled
  env[compilation_cache.ENV] = "off"
  assert probe() == ("None", 0, 0)


def test_every_cli_mode_turns_the_cache_on(tmp_path):
  """--mode=config compiles nothing, but the mode's start points JAX at the cache (created)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env[compilation_cache.ENV] = str(tmp_path / "cli_cache")
  done = subprocess.run([sys.executable, "-m", "dlmscale.main", "--mode=config",
                         "--config=tests/configs/tiny.py"], env=env, capture_output=True,
                        text=True, timeout=120, cwd=ROOT)
  assert done.returncode == 0, done.stderr[-2000:]
  assert os.path.isdir(tmp_path / "cli_cache")
