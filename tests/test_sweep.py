"""Sweeps (dlmscale/sweep/) over tests/configs/tiny_study.py (2 budgets x {ar, mdm}, 16 steps).

Planning: names, commands, budgets; every run built, validated and its corpus checked before
anything launches (nothing is written when one is bad). Dry runs, local and cloud, launch
nothing. A local sweep stopped by SIGTERM, by kill -9 of the sweep alone, and by kill -9 of its
process group, each time run again, skips its finished runs, resumes the interrupted one, and
ends with the results of a sweep that was never interrupted.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from _shared import cli_env
from dlmscale import launchers, sweep
from dlmscale.errors import DlmscaleError

REPO = Path(__file__).resolve().parents[1]
STUDY = REPO / "tests" / "configs" / "tiny_study.py"
NAMES = ["unique-4k_objective-ar", "unique-4k_objective-mdm", "unique-8k_objective-ar",
         "unique-8k_objective-mdm"]
TIMEOUT_S = 300


# ---- planning ----------------------------------------------------------------------------------

def test_plan_expands_the_study(tmp_path):
  root = tmp_path / "sweep"
  runs = sweep.plan_sweep(str(STUDY), "cpu", str(root))
  assert [r.name for r in runs] == NAMES
  run = runs[1]
  assert run.arg == "unique=4k,objective=mdm,scale=cpu"
  assert run.config_spec == f"{STUDY}:unique=4k,objective=mdm,scale=cpu"
  assert run.workdir == str(root / "unique-4k_objective-mdm")
  assert tuple(run.cfg.objectives) == ("mdm",)
  assert [(r.unique_tokens, r.total_tokens, r.epochs) for r in runs] == (
      [(4096, 8192, 2.0)] * 2 + [(8192, 8192, 1.0)] * 2)
  assert sweep.run_command(run, ["--config.train.log_every=4"]) == [
      sys.executable, "-m", "dlmscale.main", f"--config={run.config_spec}",
      f"--workdir={run.workdir}", "--config.train.log_every=4"]
  assert not root.exists()


@pytest.mark.parametrize("arg, name", [
    ("unique=0.5B,objective=mdm,scale=cpu", "unique-0.5B_objective-mdm"),
    ("scale=paper, model = 8B1A ,dropout=0.1", "model-8B1A_dropout-0.1"),
    ("data=files:/a b/*.txt,baseline", "data-files-a-b-.txt_baseline"),
    ("scale=cpu", "run"),
])
def test_run_names(arg, name):
  assert sweep.run_name(arg) == name


_BAD_STUDIES = {
    "no_runs": ("def get_config(arg=None):\n  return None\n", "has no runs()"),
    "scale": ("def get_config(arg=None):\n  return None\n"
              "def runs(scale):\n  return {'cpu': ['a=1']}[scale]\n",
              "runs('paper') failed (KeyError: 'paper')"),
    "empty": ("def get_config(arg=None):\n  return None\n"
              "def runs(scale):\n  return []\n", "has no runs at scale 'paper'"),
    "duplicate": ("def get_config(arg=None):\n  return None\n"
                  "def runs(scale):\n  return ['a=1,scale=x', 'a=1,scale=y']\n",
                  "get the same name 'a-1'"),
    "get_config": ("def get_config(arg=None):\n  raise ValueError('no such budget ' + arg)\n"
                   "def runs(scale):\n  return ['unique=9B']\n",
                   "run unique-9B ('unique=9B'): get_config failed (ValueError: no such budget"),
    "syntax": ("def get_config(:\n", "failed to load (SyntaxError"),
}


@pytest.mark.parametrize("case", sorted(_BAD_STUDIES))
def test_bad_study_is_one_line_error(tmp_path, case):
  source, message = _BAD_STUDIES[case]
  study = tmp_path / "study.py"
  study.write_text(source)
  with pytest.raises(DlmscaleError) as e:
    sweep.run_sweep(str(study), "paper", str(tmp_path / "sweep"))
  assert message in str(e.value) and "\n" not in str(e.value)
  assert not (tmp_path / "sweep").exists()


def test_unknown_scale_names_the_scales(tmp_path):
  with pytest.raises(DlmscaleError, match="unknown scale 'paper' .*: use one of cpu, "):
    sweep.run_sweep(str(STUDY), "paper", str(tmp_path / "sweep"))


def test_missing_corpus_fails_before_launching(tmp_path):
  root = tmp_path / "sweep"
  with pytest.raises(DlmscaleError) as e:
    sweep.run_sweep(str(STUDY), "missing_data", str(root))
  message = str(e.value)
  assert message.startswith("run unique-4k_objective-ar: corpus not available: "), message
  assert "no_such_corpus/train.txt' does not exist; check the path" in message
  assert not root.exists()


def test_invalid_run_fails_before_launching(tmp_path):
  # Only the last of the four runs is bad; none of the good ones may start.
  root = tmp_path / "sweep"
  with pytest.raises(DlmscaleError) as e:
    sweep.run_sweep(str(STUDY), "invalid", str(root))
  assert str(e.value) == ("run unique-8k_objective-mdm_schedule-linear: unknown train.schedule "
                          "'linear': use one of ['wsd', 'cosine', 'constant']")
  assert not root.exists()


# ---- dry runs and cloud launchers --------------------------------------------------------------

def test_dry_run_prints_every_run_and_launches_nothing(tmp_path, capsys):
  root = tmp_path / "sweep"
  records = sweep.run_sweep(str(STUDY), "cpu", str(root), dry_run=True)
  out = capsys.readouterr().out
  assert not root.exists()
  spec = f"{STUDY}:unique=4k,objective=ar,scale=cpu"
  assert out.splitlines()[:4] == [
      f"sweep {STUDY} at scale cpu: 4 runs in {root} (launcher local)",
      "unique-4k_objective-ar  pending  U=4,096 T=8,192 epochs=2.00",
      f"  workdir {root}/unique-4k_objective-ar",
      f"  $ {shlex.join([sys.executable, '-m', 'dlmscale.main', f'--config={spec}'])} "
      f"--workdir={root}/unique-4k_objective-ar"]
  assert out.splitlines()[-1] == "dry run: nothing launched (4 pending, 0 interrupted, 0 finished)"
  for r in records:
    assert f"{r['name']}  pending  U={r['unique_tokens']:,} T={r['total_tokens']:,} " \
           f"epochs={r['epochs']:.2f}" in out
    assert f"  $ {shlex.join(r['command'])}\n" in out
  assert [r["epochs"] for r in records] == [2.0, 2.0, 1.0, 1.0]


TPU = dict(tpu_name="sweep-v5p", project="my-proj", zone="us-east5-a",
           accelerator_type="v5p-128", repo_url="https://github.com/me/dlmscale.git", ref="v0.1")
XPK = dict(cluster="tpu-cluster", project="my-proj", zone="us-east5-a", tpu_type="v5p-128",
           image="us-docker.pkg.dev/my-proj/dlmscale/train:v1")


@pytest.mark.parametrize("launcher, options", [("tpu_vm", dict(TPU, delete=True)),
                                               ("xpk", XPK)])
def test_cloud_dry_run_prints_the_commands(tmp_path, capsys, launcher, options):
  root = "/mnt/shared/dlmscale-sweep-test/tiny"  # a path on the slice's shared storage
  records = sweep.run_sweep(str(STUDY), "cpu", root, launcher=launcher, dry_run=True,
                            launcher_options=dict(options))
  out = capsys.readouterr().out
  runs = sweep.plan_sweep(str(STUDY), "cpu", root, check_data=False)
  plan = launchers.plan(launcher, runs, dict(options))
  printed = [line[4:] for line in out.splitlines() if line.startswith("  $ ")]
  assert printed == [shlex.join(c) for c in plan.commands()]
  assert [r["command"] for r in records] == list(plan.runs.values())
  assert out.splitlines()[-1] == "dry run: nothing launched (4 pending, 0 interrupted, 0 finished)"
  assert ("teardown:" in out) == (launcher == "tpu_vm")


def test_cloud_commands_run_only_with_yes(tmp_path, capsys, monkeypatch):
  calls = tmp_path / "calls.jsonl"
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for tool in ("docker", "xpk"):
    (bin_dir / tool).write_text(
        f"#!{sys.executable}\nimport json, os, sys\nopen({str(calls)!r}, 'a').write("
        f"json.dumps([os.getcwd(), {tool!r}, *sys.argv[1:]]) + '\\n')\n")
    (bin_dir / tool).chmod(0o755)
  monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
  (tmp_path / "shared").mkdir()  # "mounted" here too: the summary is written
  root = str(tmp_path / "shared")
  sweep.run_sweep(str(STUDY), "cpu", root, launcher="xpk", launcher_options=dict(XPK))
  assert not calls.exists() and "not run (pass yes / --yes" in capsys.readouterr().out
  records = sweep.run_sweep(str(STUDY), "cpu", root, launcher="xpk", yes=True,
                            launcher_options=dict(XPK))
  runs = sweep.plan_sweep(str(STUDY), "cpu", root, check_data=False)
  expected = [[str(REPO), *c] for c in launchers.plan("xpk", runs, dict(XPK)).commands()]
  assert [json.loads(line) for line in calls.read_text().splitlines()] == expected
  assert [r["status"] for r in records] == ["launched"] * 4
  assert [r["status"] for r in sweep.load_summary(root)["runs"]] == ["launched"] * 4


def test_second_sweep_in_a_workdir_refused(tmp_path):
  root = tmp_path / "sweep"
  root.mkdir()
  runs = sweep.plan_sweep(str(STUDY), "cpu", str(root))
  with open(root / sweep.LOCK_FILE, "w") as held:
    fcntl.flock(held, fcntl.LOCK_EX)
    with pytest.raises(DlmscaleError, match="another sweep, or a run it started, is still"):
      sweep.run_local(runs, str(root))
  assert not (root / NAMES[0]).exists()


# ---- local: stopped, killed, resumed -----------------------------------------------------------

def sweep_command(root: Path, *args: str, scale: str = "cpu") -> list[str]:
  return [sys.executable, "-m", "dlmscale.main", "--mode=sweep", f"--study={STUDY}",
          f"--scale={scale}", f"--workdir={root}", *args]


def start_sweep(env, root: Path, log: Path, *args: str) -> subprocess.Popen:
  """The sweep in a session of its own, so its whole process group can be killed."""
  with open(log, "w") as out:
    return subprocess.Popen(sweep_command(root, *args), cwd=REPO, env=env, stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)


def test_failed_run_reported_after_the_others(tmp_path, tmp_path_factory):
  root = tmp_path / "sweep"
  proc = subprocess.run(sweep_command(root, scale="failing"), cwd=REPO,
                        env=cli_env(tmp_path_factory), capture_output=True, text=True,
                        timeout=TIMEOUT_S)
  bad, good = "unique-4k_objective-ar_batch-12", "unique-4k_objective-ar"
  log = root / "logs" / f"{bad}.log"
  assert proc.returncode == 1, proc.stderr[-3000:]
  assert f"[1/2] {bad}: FAILED with exit code 2, log {log}" in proc.stdout
  assert f"[2/2] {good}: finished in " in proc.stdout
  assert proc.stderr.splitlines()[-1] == (
      f"error: 1 of 2 runs did not finish: {bad} (failed, exit 2, log {log}): fix and rerun the "
      "sweep (finished runs are skipped)")
  assert "is not divisible by the 8 data-parallel devices" in log.read_text()
  assert sweep.run_status(str(root / good)) == "finished"
  assert [r["status"] for r in sweep.load_summary(str(root))["runs"]] == ["failed", "finished"]


def wait_mid_training(proc: subprocess.Popen, run_dir: Path, log: Path) -> None:
  """Until run_dir holds a checkpoint but no results.json: the run is between checkpoints."""
  deadline = time.time() + TIMEOUT_S
  while time.time() < deadline:
    assert proc.poll() is None, log.read_text()[-3000:]
    steps = [p for p in run_dir.glob("*/checkpoints/*") if p.name.isdigit()]
    if steps and not (run_dir / "results.json").exists():
      return
    time.sleep(0.02)
  pytest.fail(f"{run_dir.name} never started training")


def wait_until_unlocked(root: Path) -> None:
  """Until no process holds <root>/sweep.lock (the sweep and every run it started are gone)."""
  deadline = time.time() + TIMEOUT_S
  with open(root / sweep.LOCK_FILE) as f:
    while time.time() < deadline:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        fcntl.flock(f, fcntl.LOCK_UN)
        return
      except BlockingIOError:
        time.sleep(0.05)
  pytest.fail("sweep.lock is still held")


def statuses(root: Path) -> list[str]:
  return [sweep.run_status(str(root / name)) for name in NAMES]


def results(root: Path) -> dict:
  """Each run's results.json without its wall time."""
  out = {}
  for name in NAMES:
    rows = json.loads((root / name / "results.json").read_text())
    out[name] = [{k: v for k, v in row.items() if k != "wall_s"} for row in rows]
  return out


def test_sweep_stopped_and_killed_then_rerun_matches_uninterrupted(tmp_path, tmp_path_factory):
  env = cli_env(tmp_path_factory)
  ref_root, root = tmp_path / "ref", tmp_path / "sweep"
  # The uninterrupted reference sweep runs alongside.
  ref = start_sweep(env, ref_root, tmp_path / "ref.log", "--parallel=2")
  procs = [ref]
  try:
    # 1. SIGTERM while the second run trains: forwarded, the run saves, the sweep exits 143.
    log = tmp_path / "first.log"
    first = start_sweep(env, root, log)
    procs.append(first)
    wait_mid_training(first, root / NAMES[1], log)
    first.send_signal(signal.SIGTERM)
    assert first.wait(timeout=TIMEOUT_S) == 143, log.read_text()[-3000:]
    assert log.read_text().splitlines()[-1] == (
        "sweep stopped by SIGTERM: running runs saved a checkpoint; rerun the same command to "
        "resume")
    assert statuses(root) == ["finished", "interrupted", "pending", "pending"]
    assert not (root / NAMES[2]).exists()
    assert "SIGTERM received, saved a checkpoint" in (root / "logs" / f"{NAMES[1]}.log").read_text()
    summary = sweep.load_summary(str(root))
    assert [r["status"] for r in summary["runs"]] == ["finished", "interrupted", "pending",
                                                      "pending"]
    assert summary["runs"][1]["exit_code"] == 143
    mtimes = {NAMES[0]: (root / NAMES[0] / "results.json").stat().st_mtime_ns}

    # 2. Run again; kill -9 the sweep alone while the third run trains: the orphaned run gets
    # SIGTERM (its parent-death signal), saves and exits, holding sweep.lock until then.
    log = tmp_path / "second.log"
    second = start_sweep(env, root, log)
    procs.append(second)
    wait_mid_training(second, root / NAMES[2], log)
    second.kill()
    second.wait(timeout=60)
    wait_until_unlocked(root)
    assert statuses(root) == ["finished", "finished", "interrupted", "pending"]
    text = log.read_text()
    assert f"[1/4] {NAMES[0]}: finished already, skipped" in text
    assert f"[2/4] {NAMES[1]}: resuming" in text
    assert re.search(r"resumed at step \d+", (root / "logs" / f"{NAMES[1]}.log").read_text())
    assert "SIGTERM received, saved a checkpoint" in (root / "logs" / f"{NAMES[2]}.log").read_text()
    mtimes[NAMES[1]] = (root / NAMES[1] / "results.json").stat().st_mtime_ns

    # 3. Run again; kill -9 the whole process group while the last run trains.
    log = tmp_path / "third.log"
    third = start_sweep(env, root, log)
    procs.append(third)
    wait_mid_training(third, root / NAMES[3], log)
    os.killpg(third.pid, signal.SIGKILL)
    third.wait(timeout=60)
    assert statuses(root) == ["finished", "finished", "finished", "interrupted"]
    assert f"[3/4] {NAMES[2]}: resuming" in log.read_text()
    mtimes[NAMES[2]] = (root / NAMES[2] / "results.json").stat().st_mtime_ns

    # 4. Run again to the end.
    last = subprocess.run(sweep_command(root), cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S)
    assert last.returncode == 0, last.stdout[-3000:] + last.stderr[-3000:]
    assert f"[3/4] {NAMES[2]}: finished already, skipped" in last.stdout
    assert f"[4/4] {NAMES[3]}: resuming" in last.stdout
    assert last.stdout.splitlines()[-1] == (
        f"sweep: 4 of 4 runs finished; summary in {root}/sweep.json")
    for name, mtime in mtimes.items():
      assert (root / name / "results.json").stat().st_mtime_ns == mtime, name
    assert ref.wait(timeout=TIMEOUT_S) == 0, (tmp_path / "ref.log").read_text()[-3000:]
    # --parallel=2: the first two runs start before either finishes.
    ref_lines = (tmp_path / "ref.log").read_text().splitlines()
    assert [line.split(": ")[1].split(" ")[0] for line in ref_lines[:3]] == [
        "started", "started", "finished"]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  assert statuses(root) == statuses(ref_root) == ["finished"] * 4
  assert results(root) == results(ref_root)
  summary = sweep.load_summary(str(root))
  assert summary["study"] == str(STUDY) and summary["scale"] == "cpu"
  assert [(r["name"], r["status"], r.get("exit_code")) for r in summary["runs"]] == [
      (NAMES[0], "finished", None), (NAMES[1], "finished", None), (NAMES[2], "finished", None),
      (NAMES[3], "finished", 0)]
