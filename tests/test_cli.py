"""The CLI's user errors: exit code 2, one `error: ...` line naming the problem, and nothing written
to (or overwritten in) the checkpoints. Plus --mode=eval of a good workdir, which changes nothing.

Every case runs `python -m dlmscale.main` from the repo root on 8 fake CPU devices. The runs that
need no other run first are started together (they are mostly interpreter start-up and
compilation); compiled programs are shared between runs through a per-session compilation cache.
"""
from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from _shared import BackgroundProcess, cli_env

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.py"
# One objective, and a constant schedule so the compiled step does not depend on the step count
# (test_training.py's SIGTERM test uses the same arguments and so the same compiled programs).
BASE_ARGS = ("--config.objectives=('ar',)", "--config.train.schedule=constant")
TIMEOUT_S = 300


def cli_command(workdir, *args, config=TINY) -> list[str]:
  return [sys.executable, "-m", "dlmscale.main", f"--config={config}", f"--workdir={workdir}",
          *BASE_ARGS, *args]


def run_cli(env, workdir, *args, config=TINY) -> subprocess.CompletedProcess:
  return subprocess.run(cli_command(workdir, *args, config=config), cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S)


class Background(BackgroundProcess):
  """A CLI run of `config` in `workdir`, started now."""

  def __init__(self, env, logdir: Path, name: str, workdir: Path, *args, config=TINY):
    self.workdir = workdir
    super().__init__(cli_command(workdir, *args, config=config), env, logdir, name, REPO,
                     TIMEOUT_S)


def assert_user_error(proc, *names: str) -> str:
  """Exit code 2; stderr's last line is `error: ...` naming each of `names`; no traceback."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  last = lines[-1]
  assert last.startswith("error: "), proc.stderr[-3000:]
  for name in names:
    assert name in last, (name, last)
  return last


def tree_digest(root: Path) -> dict[str, str]:
  """Relative path -> sha256 of every file (and directory) under root."""
  out = {}
  for p in sorted(root.rglob("*")):
    rel = str(p.relative_to(root))
    out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
  return out


def no_checkpoints(workdir: Path) -> bool:
  return not list(workdir.rglob("checkpoints")) if workdir.exists() else True


# ---- every independent run, started together -----------------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """Starts every CLI run that needs no other run first, all at once (most of their time is
  interpreter start-up and compilation, which overlap well): {case: Background}."""
  env, root = cli_env(tmp_path_factory), tmp_path_factory.mktemp("cli")
  bad_config = root / "bad_config.py"
  bad_config.write_text(textwrap.dedent("""\
      from dlmscale.config import default_config

      def get_config():
        c = default_config()
        c.train.bogus_key = 1
        return c
      """))
  (root / "empty").mkdir()
  cases = {
      # A finished 16-step run (checkpoints 8, 12, 16); other tests damage copies of it.
      "trained": [],
      # lr 1e30 is reached after the warmup step: step 1 is finite, then the parameters blow up.
      # Checkpointing every step shows that no step at or after the first bad one is saved.
      "non_finite": ["--config.train.lr=1e30", "--config.train.checkpoint_every=1",
                     "--config.train.log_every=1"],
      "unknown_override": ["--config.train.bogus=1"],
      "unknown_key_in_file": [],
      # 'ar' comes first: the bad name must be caught before 'ar' trains.
      "unknown_objective": ["--config.objectives=('ar', 'nope')"],
      "mesh": ["--config.mesh.data=3"],
      "batch": ["--config.train.global_batch=12"],
      "missing_checkpoint": ["--mode=eval"],
      "unknown_task": ["--mode=eval", "--config.eval.tasks=hellaswag,nope"],
  }
  started = {}
  try:
    for case, args in cases.items():
      workdir = root / ("empty" if case == "missing_checkpoint" else case)
      config = bad_config if case == "unknown_key_in_file" else TINY
      started[case] = Background(env, root, case, workdir, *args, config=config)
    yield started
  finally:
    for run in started.values():
      run.kill()


def test_unknown_config_key_override(runs):
  run = runs["unknown_override"]
  workdir, proc = run.workdir, run.result()
  assert_user_error(proc, "train.bogus")
  assert "FATAL" not in proc.stderr
  assert not workdir.exists()


def test_unknown_config_key_in_config_file(runs):
  run = runs["unknown_key_in_file"]
  workdir, proc = run.workdir, run.result()
  assert_user_error(proc, "train.bogus_key")
  assert not workdir.exists()


def test_unknown_objective(runs):
  run = runs["unknown_objective"]
  workdir, proc = run.workdir, run.result()
  assert_user_error(proc, "'nope'")
  assert no_checkpoints(workdir)


def test_mesh_that_does_not_fit_the_devices(runs):
  run = runs["mesh"]
  workdir, proc = run.workdir, run.result()
  last = assert_user_error(proc, "mesh", "8")
  assert "'data': 3" in last
  assert no_checkpoints(workdir)


def test_batch_not_divisible_by_data_parallel_devices(runs):
  run = runs["batch"]
  workdir, proc = run.workdir, run.result()
  assert_user_error(proc, "global_batch", "12", "8 data-parallel devices")
  assert no_checkpoints(workdir)


def test_eval_without_checkpoint(runs):
  run = runs["missing_checkpoint"]
  workdir, proc = run.workdir, run.result()
  assert_user_error(proc, "no checkpoint", str(workdir))
  assert list(workdir.iterdir()) == []  # nothing created: no checkpoints dir, no eval.json


def test_unknown_task(runs):
  run = runs["unknown_task"]
  assert_user_error(run.result(), "unknown task 'nope'", "hellaswag")
  assert not run.workdir.exists()


def test_non_finite_loss(runs):
  run = runs["non_finite"]
  workdir, proc = run.workdir, run.result()
  last = assert_user_error(proc, "non-finite", "ar")
  bad_step = int(re.search(r"at step (\d+)", last).group(1))
  assert bad_step >= 2
  ckpts = sorted(int(p.name) for p in (workdir / "ar" / "checkpoints").iterdir())
  assert ckpts == list(range(1, bad_step))[-3:]  # every good step, the last keep_checkpoints
  records = [json.loads(line)
             for line in (workdir / "ar" / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in records] == list(range(1, bad_step))
  assert not (workdir / "results.json").exists()


# ---- runs against a trained workdir ---------------------------------------------------------

@pytest.fixture(scope="module")
def trained(runs, tmp_path_factory):
  """(env, workdir) of the finished 16-step run; tests work on copies of it."""
  proc = runs["trained"].result()
  assert proc.returncode == 0, proc.stderr[-3000:]
  workdir = runs["trained"].workdir
  steps = sorted(int(p.name) for p in (workdir / "ar" / "checkpoints").iterdir())
  assert steps == [8, 12, 16]
  return cli_env(tmp_path_factory), workdir


def copy_of(trained, tmp_path) -> Path:
  workdir = tmp_path / "run"
  shutil.copytree(trained[1], workdir)
  return workdir


def test_corrupt_checkpoint(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  ckpts = workdir / "ar" / "checkpoints"
  data_files = [p for p in (ckpts / "16" / "state").rglob("*")
                if p.is_file() and p.parent.name == "d"]
  assert data_files
  for p in data_files:  # as if the writer died half-way (Orbax's commit marker still says done)
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])
  before = tree_digest(ckpts)
  proc = run_cli(trained[0], workdir)
  assert_user_error(proc, "checkpoint step 16", "unreadable", str(ckpts / "16"))
  assert tree_digest(ckpts) == before  # neither the damaged step nor 8 and 12 were touched


def test_workdir_of_another_config(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  before = tree_digest(workdir)
  proc = run_cli(trained[0], workdir, "--config.train.lr=0.001")
  assert_user_error(proc, "different config", "train.lr", str(workdir / "ar"))
  assert tree_digest(workdir) == before


def test_eval_of_a_trained_workdir(trained, tmp_path):
  # The error cases' counterpart: --mode=eval reads the latest checkpoint and changes none.
  workdir = copy_of(trained, tmp_path)
  before = tree_digest(workdir / "ar")
  proc = run_cli(trained[0], workdir, "--mode=eval", "--config.eval.tasks=mmlu_anatomy",
                 "--config.eval.limit=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  trained_result = json.loads((workdir / "results.json").read_text())[0]
  eval_result = json.loads((workdir / "eval.json").read_text())[0]
  assert eval_result["steps"] == 16
  assert eval_result["val_mean"] == trained_result["val_mean"]
  # The configured task is scored too: 8 questions, each with its 4 options' log-likelihoods.
  task = eval_result["tasks"]["mmlu_anatomy"]
  assert task["num_examples"] == 8 and len(task["examples"]) == 8
  assert task["acc"] == sum(max(range(4), key=lambda i: e["loglikelihoods"][i]) == e["gold"]
                            for e in task["examples"]) / 8
  assert "| mmlu_anatomy | 8 | 0 |" in proc.stdout
  assert tree_digest(workdir / "ar") == before


# ---- eval / sample / code read the run's own config ----------------------------------------

def run_bare(env, *args) -> subprocess.CompletedProcess:
  """`python -m dlmscale.main ARGS` with nothing added (no --config unless given)."""
  return subprocess.run([sys.executable, "-m", "dlmscale.main", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=TIMEOUT_S)


def test_eval_without_config_uses_the_runs_saved_config(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  proc = run_bare(trained[0], "--mode=eval", f"--workdir={workdir}", "--config.eval.max_sequences=8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  trained_result = json.loads((workdir / "results.json").read_text())[0]
  eval_result = json.loads((workdir / "eval.json").read_text())[0]
  assert (eval_result["steps"], eval_result["tokens_seen"], eval_result["epochs"]) == (
      trained_result["steps"], trained_result["tokens_seen"], trained_result["epochs"])
  assert eval_result["val_sequences"] == 8  # the eval.* override applied over the saved config


def test_eval_refuses_a_config_that_changes_the_run(trained, tmp_path):
  workdir = copy_of(trained, tmp_path)
  before = tree_digest(workdir)
  proc = run_cli(trained[0], workdir, "--mode=eval", "--config.data.seq_len=64")
  assert_user_error(proc, "data.seq_len", str(workdir / "ar" / "config.json"), "eval.*")
  assert tree_digest(workdir) == before  # nothing prepared into or written to the run


def test_the_saved_config_json_is_a_config_file(trained, tmp_path):
  """A run's config.json passes back as --config (JSON false/true/null and lists read back)."""
  workdir = copy_of(trained, tmp_path)
  saved = workdir / "ar" / "config.json"
  proc = run_bare(trained[0], "--mode=sample", f"--config={saved}", f"--workdir={workdir}",
                  "--config.sample.max_new_tokens=4", "--config.objectives=ar")
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "[ar] ar checkpoint step 16" in proc.stdout


def test_config_mode_prints_json_that_reads_back_identically(trained, tmp_path):
  env = trained[0]
  first = run_bare(env, "--mode=config", f"--config={TINY}", "--config.train.lr=0.002",
                   "--config.objectives=mdm")
  assert first.returncode == 0, first.stderr[-3000:]
  resolved = json.loads(first.stdout)
  assert resolved["train"]["lr"] == 0.002 and resolved["objectives"] == ["mdm"]
  path = tmp_path / "resolved.json"
  path.write_text(first.stdout)
  second = run_bare(env, "--mode=config", f"--config={path}")
  assert second.returncode == 0, second.stderr[-3000:]
  assert json.loads(second.stdout) == resolved


def test_config_file_argument_errors_are_one_line(trained):
  env = trained[0]
  proc = run_bare(env, "--mode=config", "--config=experiments/quickstart.py:1b")
  assert_user_error(proc, "quickstart")
  proc = run_bare(env, "--mode=eval", f"--workdir={REPO / 'tests'}")
  assert_user_error(proc, "no saved config", "--config")


def test_analyze_mode_reads_a_trained_run_and_refuses_a_directory_without_one(trained, tmp_path):
  env, workdir = trained
  out = tmp_path / "analysis"
  proc = run_bare(env, "--mode=analyze", f"--runs={workdir}", f"--out={out}", "--noplots")
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads((workdir / "results.json").read_text())[0]
  assert f"{result['val_mean']:.4f}" in proc.stdout  # the summary table holds the run's number
  assert (out / "runs.csv").exists() and not list(out.glob("*.png"))
  assert_user_error(run_bare(env, "--mode=analyze", f"--runs={tmp_path / 'none'}",
                             f"--out={out}"), "no run found")
  assert_user_error(run_bare(env, "--mode=analyze", f"--runs={workdir}"), "--out")
