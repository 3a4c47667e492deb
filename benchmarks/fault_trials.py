"""Seeded fault injection through the CLI on the tiny config: kill -9 at random moments (some right
after a checkpoint step is logged, while its asynchronous save is in flight), SIGTERM, and damaged
checkpoints. Every interrupted or damaged run is rerun to completion and compared with one
uninterrupted reference run.

  nice -n 5 python benchmarks/fault_trials.py [--kills=50] [--sigterms=8] [--parallel=2]
      [--seed=0] [--out=/tmp/fault_trials]

Outcome of a trial (the rerun's):
  equal      finished; final params bitwise equal to the reference's, same val_mean, same
             metrics.jsonl records apart from wall-clock fields
  error      exit 2 and the last stderr line a one-line `error: ...` (no traceback)
  different  finished, but not equal                      (target: 0)
  unclear    anything else (a traceback, another exit code) (target: 0)
Damaged checkpoints that end in `error` are rerun with --config.train.restore_fallback=true, which
must then finish equal (the `fallback` column). Record the table in BENCHMARKS.md ("Fault
injection").
"""
from __future__ import annotations

import argparse
import collections
import concurrent.futures
import glob
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "tests", "configs", "tiny.py")
OVERRIDES = ("--config.objectives=('ar',)", "--config.train.schedule=constant")
WALL_CLOCK = ("train/tokens_per_s", "train/mfu")
CHECKPOINT_EVERY, NUM_STEPS = 4, 16  # tests/configs/tiny.py
STEP_LINE = re.compile(r"\[ar\] step (\d+)/")

os.environ.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.join(REPO, "tests"))


def _command(workdir: str, *extra: str) -> list[str]:
  return [sys.executable, "-m", "dlmscale.main", f"--config={TINY}", f"--workdir={workdir}",
          *OVERRIDES, *extra]


class Run:
  """One CLI run; its stdout lines are read as they come (with their time since the start),
its stderr kept in <workdir>.<n>.stderr."""

  def __init__(self, workdir: str, *extra: str):
    self.lines: list[tuple[float, str]] = []  # stdout, where the step lines are printed
    self.start = time.time()
    os.makedirs(os.path.dirname(workdir), exist_ok=True)
    self._err_path = f"{workdir}.{len(glob.glob(workdir + '.*.stderr'))}.stderr"
    with open(self._err_path, "w") as err:
      self.proc = subprocess.Popen(_command(workdir, *extra), cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=err, text=True, start_new_session=True)
    self.seen = threading.Condition()
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self) -> None:
    for line in self.proc.stdout:
      with self.seen:
        self.lines.append((time.time() - self.start, line.rstrip("\n")))
        self.seen.notify_all()
    with self.seen:
      self.seen.notify_all()

  def wait_for_step(self, step: int, timeout_s: float) -> bool:
    """True once `[ar] step <step>/` was logged; False if the run ended first."""
    deadline = time.time() + timeout_s
    with self.seen:
      while True:
        if any((m := STEP_LINE.search(line)) and int(m.group(1)) >= step for _, line in self.lines):
          return True
        if self.proc.poll() is not None and not self._reader.is_alive():
          return False
        self.seen.wait(max(0.01, min(0.2, deadline - time.time())))
        if time.time() > deadline:
          return False

  def wait(self) -> tuple[int, str]:
    code = self.proc.wait()
    self._reader.join()
    with open(self._err_path) as err:
      return code, err.read()


def _finish(workdir: str, *extra: str) -> tuple[int, str]:
  return Run(workdir, *extra).wait()


def _classify_failure(code: int, stderr: str) -> str:
  lines = [line for line in stderr.splitlines() if line.strip()]
  clear = (code == 2 and lines and lines[-1].startswith("error: ") and "Traceback" not in stderr
           and "Exception ignored" not in stderr)
  return "error" if clear else "unclear"


# ---- comparing with the reference ----------------------------------------------------------------

def _metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, "ar", "metrics.jsonl")) as f:
    return [{k: v for k, v in json.loads(line).items() if k not in WALL_CLOCK} for line in f]


def _val_mean(workdir: str):
  with open(os.path.join(workdir, "results.json")) as f:
    return json.load(f)[0]["val_mean"]


_PARAMS_LOCK = threading.Lock()  # one restore at a time: they share the devices of this process


def _final_params(workdir: str):
  import jax
  import numpy as np
  from dlmscale import experiment
  from _shared import tiny_config
  with _PARAMS_LOCK:
    exp = _final_params.exp = getattr(_final_params, "exp", None) or experiment.build_experiment(
        tiny_config(**{"objectives": ("ar",), "train.schedule": "constant"}), "ar")
    params, step = experiment.restore_params(exp, os.path.join(workdir, "ar"))
    return step, [np.asarray(x) for x in jax.tree.leaves(params)]


def _equal_to(reference: dict, workdir: str) -> tuple[bool, str]:
  step, params = _final_params(workdir)
  if step != NUM_STEPS:
    return False, f"latest checkpoint {step}"
  if any(a.shape != b.shape or a.tobytes() != b.tobytes()
         for a, b in zip(params, reference["params"])):
    return False, "params differ"
  if _val_mean(workdir) != reference["val_mean"]:
    return False, "val_mean differs"
  if _metrics(workdir) != reference["metrics"]:
    return False, "metrics.jsonl differs"
  return True, ""


def _rerun_outcome(reference: dict, workdir: str, *extra: str) -> tuple[str, str]:
  code, stderr = _finish(workdir, *extra)
  if code != 0:
    kind = _classify_failure(code, stderr)
    return kind, (stderr.strip().splitlines() or [""])[-1][:160]
  same, why = _equal_to(reference, workdir)
  return ("equal", "") if same else ("different", why)


# ---- trials --------------------------------------------------------------------------------------

def kill_trial(reference: dict, root: str, seed: int) -> dict:
  """kill -9 of the whole process group: at a uniform moment of the run (mode 'anytime'), of its
  training steps ('training'), or 0-0.5 s after a checkpoint step is logged ('after_save')."""
  rng = random.Random(seed)
  mode = ("anytime", "training", "after_save")[seed % 3]
  workdir = os.path.join(root, f"kill{seed}")
  run = Run(workdir)
  if mode == "after_save":
    step = rng.choice(range(CHECKPOINT_EVERY, NUM_STEPS, CHECKPOINT_EVERY))
    delay = rng.uniform(0.0, 0.5)
    run.wait_for_step(step, timeout_s=600)
    time.sleep(delay)
    moment = f"{delay:.2f}s after step {step} was logged"
  else:
    lo, hi = (0.0, reference["wall_s"]) if mode == "anytime" else reference["train_window_s"]
    at = rng.uniform(lo, hi)
    time.sleep(max(0.0, at - (time.time() - run.start)))
    moment = f"at {at:.1f}s"
  if run.proc.poll() is None:
    os.killpg(run.proc.pid, signal.SIGKILL)
  code, stderr = run.wait()
  killed = code == -signal.SIGKILL
  logged = [int(m.group(1)) for _, line in run.lines if (m := STEP_LINE.search(line))]
  outcome, note = _rerun_outcome(reference, workdir)
  return {"trial": f"kill {mode}", "seed": seed, "moment": moment, "killed": killed,
          "last_logged_step": max(logged, default=0), "outcome": outcome, "note": note}


def sigterm_trial(reference: dict, root: str, seed: int) -> dict:
  """SIGTERM to the CLI process at a uniform moment of the run; it must stop with exit 143 and
  a message (or finish), and the rerun must finish equal."""
  rng = random.Random(10_000 + seed)
  workdir = os.path.join(root, f"sigterm{seed}")
  run = Run(workdir)
  at = rng.uniform(0.0, reference["wall_s"])
  time.sleep(max(0.0, at - (time.time() - run.start)))
  if run.proc.poll() is None:
    run.proc.send_signal(signal.SIGTERM)
  code, stderr = run.wait()
  stop = sigterm_stop(code, stderr)
  outcome, note = _rerun_outcome(reference, workdir)
  if stop not in ("stopped", "finished"):
    last = ([line for line in stderr.splitlines() if line.strip()] or [""])[-1]
    outcome, note = "unclear", f"{stop}, exit {code}: {last[:120]}"
  return {"trial": "sigterm", "seed": seed, "moment": f"at {at:.1f}s", "killed": code == 143,
          "stop": stop, "outcome": outcome, "note": note}


def sigterm_stop(code: int, stderr: str) -> str:
  """How a run took SIGTERM: 'stopped' (exit 143, the last line the message), 'finished' (exit 0,
  the signal came after the work), 'swallowed' (exit 0 although the handler raised: Python
  reported the exception as unraisable, e.g. inside a gc callback, and the run went on), or
  'unclear' (anything else: a traceback, exit -15, other lines after the message)."""
  lines = [line for line in stderr.splitlines() if line.strip()]
  if code == 143 and lines and "SIGTERM" in lines[-1] and "Traceback" not in stderr:
    return "stopped"
  if code == 0:
    return "swallowed" if "Exception ignored" in stderr and "Preempted" in stderr else "finished"
  return "unclear"


def _largest(step_dir: str, smallest: bool = False) -> str:
  files = sorted(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")),
                 key=os.path.getsize)
  return files[0] if smallest else files[-1]


def _flip(path: str, count: int, rng: random.Random | None = None) -> None:
  with open(path, "rb") as f:
    data = bytearray(f.read())
  for _ in range(count):
    data[len(data) // 2 if rng is None else rng.randrange(len(data))] ^= 0xFF
  with open(path, "wb") as f:
    f.write(bytes(data))


def _truncate(path: str) -> None:
  os.truncate(path, os.path.getsize(path) // 2)


def _zero(path: str) -> None:
  size = os.path.getsize(path)
  with open(path, "wb") as f:
    f.write(bytes(size))


def _empty_state(step_dir: str) -> None:
  shutil.rmtree(os.path.join(step_dir, "state"))
  os.mkdir(os.path.join(step_dir, "state"))


DAMAGE = {  # kind -> damage(step_dir, rng)
    "flip 1 byte, largest array file": lambda d, r: _flip(_largest(d), 1),
    "flip 1 random byte, largest array file": lambda d, r: _flip(_largest(d), 1, r),
    "flip 16 random bytes, largest array file": lambda d, r: _flip(_largest(d), 16, r),
    "truncate largest array file": lambda d, r: _truncate(_largest(d)),
    "delete largest array file": lambda d, r: os.remove(_largest(d)),
    "zero largest array file": lambda d, r: _zero(_largest(d)),
    "flip 1 byte, smallest array file": lambda d, r: _flip(_largest(d, smallest=True), 1),
    "flip 1 byte, data state JSON": lambda d, r: _flip(os.path.join(d, "data", "metadata"), 1),
    "delete data state JSON": lambda d, r: os.remove(os.path.join(d, "data", "metadata")),
    "flip 1 byte, tree _METADATA": lambda d, r: _flip(os.path.join(d, "state", "_METADATA"), 1),
    "flip 1 byte, OCDBT manifest": lambda d, r: _flip(
        os.path.join(d, "state", "manifest.ocdbt"), 1),
    "flip 1 byte, per-process manifest": lambda d, r: _flip(
        os.path.join(d, "state", "ocdbt.process_0", "manifest.ocdbt"), 1),
    "delete _sharding": lambda d, r: os.remove(os.path.join(d, "state", "_sharding")),
    "empty state directory": lambda d, r: _empty_state(d),
}


def damage_trial(reference: dict, root: str, kind: str, seed: int) -> dict:
  """The reference run as if stopped after step 12, its step 12 damaged; the rerun resumes."""
  workdir = os.path.join(root, f"damage{seed}_{re.sub(r'[^a-z0-9]+', '_', kind.lower())}")
  shutil.copytree(reference["dir"], workdir)
  shutil.rmtree(os.path.join(workdir, "ar", "checkpoints", str(NUM_STEPS)))
  DAMAGE[kind](os.path.join(workdir, "ar", "checkpoints", "12"), random.Random(20_000 + seed))
  outcome, note = _rerun_outcome(reference, workdir)
  row = {"trial": f"damage: {kind}", "seed": seed, "outcome": outcome, "note": note}
  if outcome == "error":
    row["fallback"], why = _rerun_outcome(reference, workdir,
                                          "--config.train.restore_fallback=true")
    row["note"] += f" | fallback: {why}" if why else ""
  return row


def make_reference(root: str) -> dict:
  workdir = os.path.join(root, "reference")
  run = Run(workdir)
  code, stderr = run.wait()
  wall = time.time() - run.start
  if code:
    sys.exit(f"the reference run failed ({code}):\n{stderr[-3000:]}")
  steps = [t for t, line in run.lines if STEP_LINE.search(line)]
  _, params = _final_params(workdir)
  return {"dir": workdir, "wall_s": wall, "train_window_s": (min(steps) - 1.0, max(steps)),
          "params": params, "val_mean": _val_mean(workdir), "metrics": _metrics(workdir)}


def summarize(rows: list[dict]) -> str:
  outcomes = ("equal", "error", "different", "unclear")
  counts = collections.defaultdict(collections.Counter)
  for r in rows:
    kind = r["trial"] if not r["trial"].startswith("damage") else r["trial"]
    counts[kind][r["outcome"]] += 1
    counts[kind]["trials"] += 1
    counts[kind]["interrupted"] += bool(r.get("killed"))
    if "stop" in r:
      counts[kind]["stop " + r["stop"]] += 1
    if "fallback" in r:
      counts[kind]["fallback " + r["fallback"]] += 1
  lines = ["| trial | trials | interrupted | equal | error | different | unclear "
           "| fallback equal |",
           "|---|---|---|---|---|---|---|---|"]
  for kind, c in counts.items():
    interrupted = c["interrupted"] if not kind.startswith("damage") else "—"
    fallback = (f"{c['fallback equal']}/{sum(v for k, v in c.items() if k.startswith('fallback'))}"
                if any(k.startswith("fallback") for k in c) else "—")
    lines.append(f"| {kind} | {c['trials']} | {interrupted} | "
                 + " | ".join(str(c[o]) for o in outcomes) + f" | {fallback} |")
  stops = collections.Counter(r["stop"] for r in rows if "stop" in r)
  if stops:
    lines.append(f"| (SIGTERM: how the run took it) | {sum(stops.values())} | | "
                 + ", ".join(f"{k} {v}" for k, v in sorted(stops.items())) + " | | | | |")
  logged = collections.Counter(r["last_logged_step"] for r in rows if r.get("killed")
                               and "last_logged_step" in r)
  if logged:
    lines.append("| (kill -9: last step logged before it, 0 = during start-up) | "
                 f"{sum(logged.values())} | | "
                 + ", ".join(f"{k}: {v}" for k, v in sorted(logged.items())) + " | | | | |")
  total = collections.Counter(r["outcome"] for r in rows)
  lines.append(f"| **all** | {len(rows)} | | " + " | ".join(str(total[o]) for o in outcomes)
               + " | |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--kills", type=int, default=50)
  parser.add_argument("--sigterms", type=int, default=8)
  parser.add_argument("--damage_seeds", type=int, default=1, help="trials per damage kind")
  parser.add_argument("--parallel", type=int, default=2, help="trials at a time")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default="/tmp/fault_trials")
  args = parser.parse_args()
  shutil.rmtree(args.out, ignore_errors=True)
  os.makedirs(args.out)
  start = time.time()
  reference = make_reference(args.out)
  print(f"reference: {reference['wall_s']:.0f}s, training steps logged between "
        f"{reference['train_window_s'][0]:.1f}s and {reference['train_window_s'][1]:.1f}s",
        flush=True)
  jobs = [(kill_trial, args.seed + i) for i in range(args.kills)]
  jobs += [(sigterm_trial, args.seed + i) for i in range(args.sigterms)]
  jobs += [(lambda ref, root, s, k=kind: damage_trial(ref, root, k, s), args.seed + i)
           for kind in DAMAGE for i in range(args.damage_seeds)]
  rows = []
  with concurrent.futures.ThreadPoolExecutor(args.parallel) as pool:
    futures = [pool.submit(fn, reference, args.out, seed) for fn, seed in jobs]
    for future in concurrent.futures.as_completed(futures):
      row = future.result()
      rows.append(row)
      print(json.dumps(row), flush=True)
  rows.sort(key=lambda r: (r["trial"], r["seed"]))
  with open(os.path.join(args.out, "trials.json"), "w") as f:
    json.dump(rows, f, indent=1)
  print(summarize(rows))
  print(f"{len(rows)} trials in {(time.time() - start) / 60:.0f} min; rows in "
        f"{args.out}/trials.json")


if __name__ == "__main__":
  main()
