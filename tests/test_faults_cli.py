"""Fault injection through the CLI: a full disk (a small tmpfs), a read-only or file --workdir,
SIGTERM during start-up, and a damaged checkpoint all end with one `error:` line (or the SIGTERM
message) and nothing lost; after freeing space the run finishes equal to an uninterrupted one.

The tmpfs is mounted in a private mount namespace (`unshare -rm`), so no root is needed; where the
kernel forbids user namespaces these tests skip, saying so.
"""
from __future__ import annotations

import json
import shlex
import shutil
import signal
import textwrap
import subprocess
import sys
import time
from pathlib import Path

import pytest

from _shared import cli_env

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.py"
ARGS = ("--config.objectives=('ar',)", "--config.train.schedule=constant")
WALL_CLOCK = ("train/tokens_per_s",)


def _command(workdir) -> list[str]:
  return [sys.executable, "-m", "dlmscale.main", f"--config={TINY}", f"--workdir={workdir}", *ARGS]


def _unshare_works() -> bool:
  if not shutil.which("unshare"):
    return False
  probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs tmpfs /mnt 2>/dev/null || "
                          "mount -t tmpfs tmpfs /tmp"], capture_output=True, timeout=30)
  return probe.returncode == 0


needs_unshare = pytest.mark.skipif(not _unshare_works(),
                                   reason="no user+mount namespaces here (unshare -rm) for a tmpfs")


def _in_tmpfs(env, mount: Path, size: str, command: list[str], copy_to: Path, options="") -> tuple:
  """Runs `command` with a fresh tmpfs of `size` at `mount` (private to it), then copies the
  tmpfs's contents to `copy_to`: (returncode, stderr)."""
  mount.mkdir(parents=True, exist_ok=True)
  copy_to.mkdir(parents=True, exist_ok=True)
  err = copy_to.parent / f"{copy_to.name}.stderr"
  script = (f"mount -t tmpfs -o size={size}{options} tmpfs {shlex.quote(str(mount))} && "
            f"{shlex.join(command)} > /dev/null 2> {shlex.quote(str(err))}; rc=$?; "
            f"cp -a {shlex.quote(str(mount))}/. {shlex.quote(str(copy_to))}/; exit $rc")
  proc = subprocess.run(["unshare", "-rm", "bash", "-c", script], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300)
  return proc.returncode, err.read_text()


def _user_error(returncode, stderr, *names) -> str:
  assert returncode == 2, (returncode, stderr[-3000:])
  assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines[-1].startswith("error: "), stderr[-3000:]
  for name in names:
    assert name in lines[-1], (name, lines[-1])
  return lines[-1]


def _metrics(workdir):
  lines = (workdir / "ar" / "metrics.jsonl").read_text().splitlines()
  return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in lines]


@pytest.fixture(scope="module")
def env(tmp_path_factory):
  return cli_env(tmp_path_factory)


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
  workdir = tmp_path_factory.mktemp("faults_cli") / "ref"
  proc = subprocess.run(_command(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return workdir


def _checkpoint_bytes(reference) -> int:
  return sum(p.stat().st_size for p in (reference / "ar" / "checkpoints" / "8").rglob("*")
             if p.is_file())


@needs_unshare
def test_full_disk_is_one_line_keeps_the_last_good_checkpoint_and_a_rerun_finishes_equal(
    env, reference, tmp_path):
  # Room for the run's small files and one checkpoint, not two: the second save fails.
  size = f"{int(_checkpoint_bytes(reference) * 1.7) // 1024}k"
  mount, copy = tmp_path / "disk", tmp_path / "after"
  rc, stderr = _in_tmpfs(env, mount, size, _command(mount / "run"), copy)
  last = _user_error(rc, stderr, "No space left on device", str(mount / "run" / "ar"))
  assert "checkpoint" in last or "writing" in last
  workdir = copy / "run"
  good = sorted(int(p.name) for p in (workdir / "ar" / "checkpoints").iterdir() if p.name.isdigit())
  assert good, "the first checkpoint fitted and must survive"
  proc = subprocess.run(_command(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert f"resumed at step {good[-1]}" in proc.stderr
  ref_results = json.loads((reference / "results.json").read_text())
  results = json.loads((workdir / "results.json").read_text())
  assert results[0]["val_mean"] == ref_results[0]["val_mean"]
  assert _metrics(workdir) == _metrics(reference)


@needs_unshare
def test_read_only_workdir_is_one_line_before_any_work(env, tmp_path):
  mount = tmp_path / "ro"
  rc, stderr = _in_tmpfs(env, mount, "1m", _command(mount / "run"), tmp_path / "after",
                         options=",ro")
  _user_error(rc, stderr, "--workdir", str(mount / "run"), "not writable")


def test_workdir_that_is_a_file_is_one_line(env, tmp_path):
  path = tmp_path / "a_file"
  path.write_text("not a directory")
  proc = subprocess.run(_command(path), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  _user_error(proc.returncode, proc.stderr, "--workdir", str(path), "is a file")
  assert path.read_text() == "not a directory"


def test_sigterm_during_start_up_exits_143_with_a_message(env, tmp_path):
  proc = subprocess.Popen(_command(tmp_path / "run"), cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  time.sleep(1.5)  # importing jax, parsing flags, preparing data: before any training step
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 143, (proc.returncode, stderr[-3000:])
  assert "Traceback" not in stderr, stderr[-3000:]
  last = [line for line in stderr.splitlines() if line.strip()][-1]
  assert "SIGTERM received" in last and "rerun the same command" in last, last


def test_damaged_checkpoint_through_the_cli_is_exactly_one_line(env, reference, tmp_path):
  """No Orbax/TensorStore tracebacks or 'Exception ignored in <coroutine>' after the error."""
  workdir = tmp_path / "run"
  shutil.copytree(reference, workdir)
  files = sorted((workdir / "ar" / "checkpoints" / "16" / "state").glob("ocdbt.process_0/d/*"),
                 key=lambda p: p.stat().st_size)
  data = bytearray(files[-1].read_bytes())
  for k in range(0, len(data), max(1, len(data) // 16)):  # 16 flips: a decode error
    data[k] ^= 0xFF
  files[-1].write_bytes(bytes(data))
  proc = subprocess.run(_command(workdir), cwd=REPO, env=env, capture_output=True, text=True,
                        timeout=300)
  _user_error(proc.returncode, proc.stderr, "checkpoint step 16", "restore_fallback")
  assert [line for line in proc.stderr.splitlines() if line.strip()] == [
      proc.stderr.strip().splitlines()[-1]], proc.stderr[-3000:]


@pytest.mark.parametrize("configured", [True, False])
def test_unretrieved_async_write_errors_stay_out_of_the_cli_output(configured):
  """A full disk fails several of Orbax's concurrent writes; asyncio logs each unretrieved one,
  with a traceback, when it is collected (in CI: after the one-line error). The CLI's logging
  drops those; without it (the control) the same script prints them."""
  script = textwrap.dedent(f"""\
      import asyncio, gc
      from dlmscale import main
      if {configured}:
        main._configure_logging()
      async def write(i):
        raise ValueError(f"RESOURCE_EXHAUSTED: write {{i}}")
      async def save():
        gathered = asyncio.gather(write(0), write(1))
        await asyncio.sleep(0.01)  # both fail; nobody awaits the gather
        del gathered
        gc.collect()
      asyncio.run(save())
      gc.collect()
      print("done")
      """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert proc.returncode == 0 and proc.stdout.strip() == "done", proc.stderr[-2000:]
  if configured:
    assert "never retrieved" not in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
  else:
    assert "exception was never retrieved" in proc.stderr, proc.stderr  # the check can see it


def test_sigterm_handled_inside_a_gc_callback_still_stops_the_program():
  """Python ignores exceptions raised in gc callbacks (JAX registers one): a SIGTERM whose handler
  runs there must be delivered again, not swallowed."""
  script = textwrap.dedent("""\
      import gc, os, signal, sys, time
      from dlmscale import main
      from dlmscale.preemption import Preempted
      sys.unraisablehook = main._handle_unraisable
      signal.signal(signal.SIGTERM, main._stop_on_sigterm)
      fired = []
      def callback(phase, info):
        if not fired:
          fired.append(1)
          os.kill(os.getpid(), signal.SIGTERM)
          sum(range(10000))  # the handler runs here, inside the callback
      gc.callbacks.append(callback)
      try:
        gc.collect()
        for _ in range(200):
          time.sleep(0.01)
      except Preempted:
        print("stopped")
        sys.exit(143)
      print("carried on")
      """)
  proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True,
                        timeout=120)
  assert (proc.returncode, proc.stdout.strip()) == (143, "stopped"), proc.stderr[-2000:]
