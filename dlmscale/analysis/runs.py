"""Collects run directories (finished or still training) into one row per evaluation point.

A run workdir W holds one directory per objective, W/<objective>/ with config.json (the resolved
config), metrics.jsonl (training windows `train/...` and evaluations `eval/...` by step) and
checkpoints/; W/results.json appears when every objective finished, W/eval.json after
--mode=eval. A sweep directory holds runs below it (SWEEP/<run name>/). Every path goes through
etils.epath, so gs:// run directories are read the same way as local ones.
"""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

from etils import epath

from dlmscale import objectives
from dlmscale.errors import DlmscaleError

RESULTS_FILE, EVAL_FILE = "results.json", "eval.json"
# Directories inside a run or a sweep that never hold a run: not walked.
_NOT_RUNS = frozenset({"checkpoints", "tb", "logs"})
_MAX_DEPTH = 4  # SWEEP/<study>/<run>/... is as deep as a layout we know goes
# Data settings that change how a corpus is read, not which tokens a run sees.
_OPERATIONAL_DATA_KEYS = frozenset({"workers", "loader_workers", "in_memory_mb",
                                    "records_per_shard"})
DATA_FINGERPRINTS = ("tokenizer_fingerprint", "train_split_fingerprint", "val_split_fingerprint")


@dataclasses.dataclass
class Series:
  """One objective of one run: its settings, identity and evaluation points in step order."""
  run: str
  objective: str
  path: str
  config: dict
  kind: str
  finished: bool
  stream_fingerprint: str | None
  data_fingerprints: dict
  points: list[dict]  # {step, tokens_seen, epochs, val_kind, val_mean, val_stderr, <task>/<m>}
  progress: dict  # the latest training window: step, tokens_seen, epochs, train_loss

  @property
  def num_steps(self) -> int:
    d, t = self.config["data"], self.config["train"]
    return int(d["total_tokens"]) // (int(t["global_batch"]) * int(d["seq_len"]))

  @property
  def noise_rate(self) -> float | None:
    """The input-mask or dropout rate of a noisy AR objective; None for plain AR and DLM."""
    if self.kind != "ar" or self.objective == "ar":
      return None
    rate = self.config.get("objective_args", {}).get(self.objective, {}).get("rate")
    return None if rate is None else float(rate)

  @property
  def label(self) -> str:
    return self.objective if self.noise_rate is None else f"{self.objective} {self.noise_rate:g}"

  @property
  def stream_key(self) -> str:
    """Equal for runs whose data config promises the same token stream (see DESIGN.md)."""
    data = {k: v for k, v in self.config["data"].items() if k not in _OPERATIONAL_DATA_KEYS}
    return json.dumps({"data": data, "global_batch": self.config["train"]["global_batch"]},
                      sort_keys=True)

  @property
  def model_key(self) -> str:
    m = self.config["model"]
    return json.dumps({k: m.get(k) for k in ("d_model", "num_layers", "num_heads", "d_ff",
                                             "num_experts", "experts_per_token", "moe_d_ff")},
                      sort_keys=True)

  @property
  def model_label(self) -> str:
    m = self.config["model"]
    label = f"d{m['d_model']}xL{m['num_layers']}"
    if m.get("num_experts"):
      label += f" MoE {m['num_experts']}e top-{m.get('experts_per_token')}"
    return label


# ---- discovery -----------------------------------------------------------------------------------

def _objective_dirs(path: epath.Path) -> list[epath.Path]:
  return sorted((c for c in path.iterdir() if c.is_dir() and c.name not in _NOT_RUNS
                 and ((c / "metrics.jsonl").exists() or (c / "config.json").exists())),
                key=lambda c: c.name)


def _is_run(path: epath.Path) -> bool:
  return (path / RESULTS_FILE).exists() or bool(_objective_dirs(path))


def find_runs(root: str) -> list[epath.Path]:
  """The run workdirs at or below `root` (a run, or a sweep of runs); DlmscaleError if none."""
  top = epath.Path(root)
  if not top.is_dir():
    raise DlmscaleError(f"no run found in {root}: no such directory")
  found, frontier = [], [top]
  for _ in range(_MAX_DEPTH + 1):
    below = []
    for path in frontier:
      if _is_run(path):
        found.append(path)
      else:
        below += [c for c in sorted(path.iterdir(), key=lambda c: c.name)
                  if c.is_dir() and c.name not in _NOT_RUNS and not c.name.startswith(".")]
    frontier = below
  if not found:
    hint = (f" ({root} looks like one objective's directory: pass its parent)"
            if (top / "metrics.jsonl").exists() or (top / "config.json").exists() else
            " (a run directory holds <objective>/config.json and metrics.jsonl)")
    raise DlmscaleError(f"no run found in {root}{hint}")
  return found


def run_names(roots: list[str]) -> list[tuple[str, epath.Path]]:
  """(name, workdir) of every run below `roots`; a name is the run's path below the root it was
  found in (the directory's own name when a run was given), prefixed by the root's name when
  two roots hold runs of the same name."""
  named, seen = [], set()
  for root in roots:
    top = epath.Path(root)
    for run in find_runs(root):
      if str(run) in seen:
        continue
      seen.add(str(run))
      rel = str(run)[len(str(top)):].strip("/")
      # A run given itself is named by its directory (prefix: its parent's); one found below
      # a root by its path there (prefix: the root's name).
      named.append((rel, top.name, run) if rel else (top.name, top.parent.name, run))
  counts = {}
  for rel, _, _ in named:
    counts[rel] = counts.get(rel, 0) + 1
  out = [(f"{prefix}/{rel}" if counts[rel] > 1 else rel, run) for rel, prefix, run in named]
  names = [n for n, _ in out]
  dup = sorted({n for n in names if names.count(n) > 1})
  if dup:
    raise DlmscaleError(f"two runs are both named {dup[0]!r}: pass directories with distinct names")
  return out


# ---- reading -------------------------------------------------------------------------------------

def _read_json(path: epath.Path):
  return json.loads(path.read_text()) if path.exists() else None


def read_jsonl(path: epath.Path) -> list[dict]:
  """metrics.jsonl records; a running run may be caught mid-append, so an unparsable LAST line
  is dropped (one anywhere else is an error)."""
  if not path.exists():
    return []
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  records = []
  for i, line in enumerate(lines):
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      if i == len(lines) - 1:
        break
      raise DlmscaleError(f"{path} line {i + 1} is not JSON: the file is damaged") from None
  return records


def _scalar_tasks(tasks: dict) -> dict:
  """{task/metric: value} of a result's task dict, as metrics.jsonl flattens it."""
  return {f"{task}/{k}": float(v) for task, m in (tasks or {}).items() for k, v in m.items()
          if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _checkpoint_fingerprint(objective_dir: epath.Path) -> str | None:
  """The stream fingerprint a running run saved with its latest checkpoint (its data state is a
  small JSON file), or None when there is none."""
  ckpt = objective_dir / "checkpoints"
  if not ckpt.is_dir():
    return None
  steps = sorted((int(c.name) for c in ckpt.iterdir() if c.name.isdigit()), reverse=True)
  for step in steps:
    try:
      state = json.loads((ckpt / str(step) / "data" / "metadata").read_text())
    except (OSError, ValueError):
      continue  # a checkpoint still being written
    if isinstance(state, dict) and state.get("stream_fingerprint"):
      return state["stream_fingerprint"]
  return None


def _kind(objective: str, result: dict | None, where: str) -> str:
  if objective in objectives.KINDS:
    return objectives.kind_of(objective)
  if result and result.get("val_kind") in ("nll", "elbo"):  # a user objective, not imported here
    return "ar" if result["val_kind"] == "nll" else "dlm"
  raise DlmscaleError(f"{where}: objective {objective!r} is not registered and no result says "
                      "its kind: import the module that registers it before analysing")


def _points(records: list[dict], extra: list[dict], config: dict, kind: str) -> list[dict]:
  """Evaluation points by step: metrics.jsonl's eval records, then eval.json / results.json
  entries (written later, so their values win where both name a metric at one step)."""
  train = {r["step"]: r for r in records if "train/loss" in r}
  by_step: dict[int, dict] = {}
  for r in records:
    values = {k[len("eval/"):]: v for k, v in r.items() if k.startswith("eval/")}
    if values:
      by_step.setdefault(int(r["step"]), {}).update(values)
  for result in extra:
    if "val_mean" not in result and not result.get("tasks"):
      continue
    values = {k: result[k] for k in ("val_mean", "val_stderr", "val_kind", "tokens_seen",
                                     "epochs") if k in result}
    values.update(_scalar_tasks(result.get("tasks")))
    by_step.setdefault(int(result["steps"]), {}).update(values)
  d, t = config["data"], config["train"]
  tokens_per_step = int(t["global_batch"]) * int(d["seq_len"])
  points = []
  for step in sorted(by_step):
    p = dict(by_step[step])
    window = train.get(step, {})
    tokens = p.pop("tokens_seen", window.get("train/tokens_seen", step * tokens_per_step))
    epochs = p.pop("epochs", window.get("train/epoch", tokens / int(d["unique_tokens"])))
    p.setdefault("val_kind", "nll" if kind == "ar" else "elbo")
    points.append({"step": step, "tokens_seen": int(tokens), "epochs": float(epochs),
                   "train_loss": window.get("train/loss"), **p})
  return points


def _progress(records: list[dict]) -> dict:
  windows = [r for r in records if "train/loss" in r]
  if not windows:
    return {"step": 0, "tokens_seen": 0, "epochs": 0.0, "train_loss": None}
  last = windows[-1]
  return {"step": int(last["step"]), "tokens_seen": int(last.get("train/tokens_seen", 0)),
          "epochs": float(last.get("train/epoch", 0.0)), "train_loss": last["train/loss"]}


def read_run(name: str, workdir: epath.Path) -> list[Series]:
  """Every objective trained (or training) in one run workdir."""
  results = {r["objective"]: r for r in _read_json(workdir / RESULTS_FILE) or []}
  evals = {r["objective"]: r for r in _read_json(workdir / EVAL_FILE) or []}
  dirs = _objective_dirs(workdir)
  if not dirs:
    raise DlmscaleError(f"{workdir} has {RESULTS_FILE} but no <objective>/config.json: "
                        "the run directory is incomplete")
  out = []
  for objective_dir in dirs:
    objective = objective_dir.name
    config = _read_json(objective_dir / "config.json")
    if config is None:
      raise DlmscaleError(f"{objective_dir} has metrics.jsonl but no config.json: cannot tell "
                          "its token budget")
    result, evaluated = results.get(objective), evals.get(objective)
    kind = _kind(objective, result or evaluated, str(objective_dir))
    records = read_jsonl(objective_dir / "metrics.jsonl")
    extra = [r for r in (result, evaluated) if r]
    series = Series(
        run=name, objective=objective, path=str(objective_dir), config=config, kind=kind,
        finished=False,
        stream_fingerprint=(result or {}).get("stream_fingerprint")
        or _checkpoint_fingerprint(objective_dir),
        data_fingerprints={k: v for k, v in ((result or {}).get("data") or {}).items()
                           if k in DATA_FINGERPRINTS},
        points=_points(records, extra, config, kind), progress=_progress(records))
    # Finished: trained to the end of its budget and validated there. results.json says so at
    # the end of the whole run; the final eval record says so as soon as this objective is done.
    series.finished = result is not None or any(
        p["step"] == series.num_steps and p.get("val_mean") is not None for p in series.points)
    out.append(series)
  return out


def collect(roots: list[str]) -> list[Series]:
  """Every objective of every run at or below `roots` (run workdirs or sweep directories)."""
  if not roots:
    raise DlmscaleError("no run directory given: name at least one run or sweep directory")
  return [s for name, workdir in run_names(list(roots)) for s in read_run(name, workdir)]


# ---- token-matching ------------------------------------------------------------------------------

def token_match_problems(series: list[Series]) -> list[str]:
  """One line for each run whose data config matches an earlier run's but whose stream (or
  prepared data) fingerprint differs: the two did not see the same tokens, so comparing them is
  not token-matched. A series without a fingerprint yet (a run before its first checkpoint) is
  not compared on it."""
  problems = []
  first: dict[tuple[str, str], tuple[Series, str]] = {}  # (stream key, what) -> first seen
  for s in series:
    values = {"stream fingerprint": s.stream_fingerprint}
    values.update({k.replace("_", " "): s.data_fingerprints.get(k) for k in DATA_FINGERPRINTS})
    for what, value in values.items():
      if not value:
        continue
      ref, ref_value = first.setdefault((s.stream_key, what), (s, value))
      if ref_value != value:
        d = s.config["data"]
        problems.append(
            f"{ref.run}/{ref.objective} and {s.run}/{s.objective} share a data config "
            f"(U={d['unique_tokens']:,}, T={d['total_tokens']:,} tokens) but their {what}s "
            f"differ ({ref_value[:12]} vs {value[:12]}): they did not see the same tokens")
        break
  return problems


def check_token_matched(series: list[Series], force: bool) -> list[str]:
  """The problems found; DlmscaleError on the first unless force."""
  problems = token_match_problems(series)
  if problems and not force:
    raise DlmscaleError(f"not token-matched: {problems[0]}; rerun one of them or pass "
                        "--force to compare anyway")
  return problems


# ---- the table -----------------------------------------------------------------------------------

BASE_COLUMNS = ("run", "objective", "kind", "model", "params", "d_model", "num_layers",
                "num_experts", "unique_tokens", "total_tokens", "seq_len", "global_batch",
                "data_sources", "noise_rate", "step", "tokens_seen", "epochs", "val_kind",
                "val_mean", "val_stderr", "train_loss", "final", "finished",
                "stream_fingerprint")


def _params(config: dict) -> int | None:
  """A parameter count if the config records one (this codebase's configs do not)."""
  for key in ("parameters", "params", "num_params"):
    value = config.get("model", {}).get(key, config.get(key))
    if isinstance(value, dict):
      value = value.get("total")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      return int(value)
  return None


def rows(series: list[Series]) -> list[dict]:
  """One flat dict per (run, objective, evaluation point), BASE_COLUMNS then task metrics."""
  out = []
  for s in series:
    d, m = s.config["data"], s.config["model"]
    base = {"run": s.run, "objective": s.objective, "kind": s.kind, "model": s.model_label,
            "params": _params(s.config), "d_model": m.get("d_model"),
            "num_layers": m.get("num_layers"), "num_experts": m.get("num_experts", 0),
            "unique_tokens": int(d["unique_tokens"]), "total_tokens": int(d["total_tokens"]),
            "seq_len": int(d["seq_len"]), "global_batch": int(s.config["train"]["global_batch"]),
            "data_sources": d.get("sources"), "noise_rate": s.noise_rate}
    for p in s.points:
      row = {**base, **{k: p.get(k) for k in ("step", "tokens_seen", "epochs", "val_kind",
                                               "val_mean", "val_stderr", "train_loss")}}
      row.update(final=p["step"] == s.num_steps, finished=s.finished,
                 stream_fingerprint=s.stream_fingerprint)
      row.update({k: v for k, v in p.items() if "/" in k})
      out.append(row)
  return out


def finite(x: Any) -> bool:
  return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)
