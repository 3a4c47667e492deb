"""Metrics sinks: JSONL and TensorBoard event files in the workdir (with the run's config as
TensorBoard hparams), optionally mirrored to Weights & Biases, and the progress line."""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Mapping

from etils import epath

from dlmscale.errors import ConfigError
from dlmscale.run_files import write_text_atomic


def _append(path: epath.Path, text: str) -> None:
  """Appends to a local file. An object store has no append (gcsfs's 'a' mode replaces the
  object), so on a bucket the object is rewritten whole: one small upload per logging window."""
  if "://" in str(path):
    path.write_text((path.read_text() if path.exists() else "") + text)
    return
  with path.open("a") as f:
    f.write(text)


def run_hparams(config, objective: str) -> dict[str, str | int | float | bool]:
  """The run's config as flat hparams: dotted keys, scalar values (sequences as JSON text).

  Only the run's own objective and its arguments are kept (the config may name several), and
  the sharding rules, which say nothing about the experiment, are left out."""
  plain = json.loads(config.to_json()) if hasattr(config, "to_json") else dict(config)
  plain.pop("rules", None)
  plain.pop("objectives", None)
  plain["objective_args"] = {objective: plain.get("objective_args", {}).get(objective, {})}
  out: dict = {"objective": objective}

  def walk(node, prefix):
    for key, value in sorted(node.items()):
      if isinstance(value, Mapping):
        walk(value, f"{prefix}{key}.")
      elif value is not None:
        out[prefix + key] = value if isinstance(value, (str, int, float, bool)) else \
            json.dumps(value)
  walk(plain, "")
  return out


class MetricsWriter:
  """Appends {step, **scalars} records to metrics.jsonl and TensorBoard; main process only.

  hparams (see run_hparams) go to TensorBoard's hparams dashboard, whose table shows them beside
  the run's scalars (loss, validation, task metrics). wandb_project mirrors every record to that
  Weights & Biases project (the 'wandb' extra; WANDB_MODE=offline keeps it in <workdir>/wandb
  for `wandb sync`), as one W&B run per workdir that a resumed run continues."""

  def __init__(self, workdir: str, *, enabled: bool = True, hparams: Mapping | None = None,
               wandb_project: str = ""):
    self.enabled = enabled
    self.path = epath.Path(workdir) / "metrics.jsonl"
    self._tb = self._wandb = None
    if enabled:
      epath.Path(workdir).mkdir(parents=True, exist_ok=True)
      from tensorboardX import SummaryWriter  # imported lazily: only the main process writes
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      if hparams:
        self._write_hparams(dict(hparams))
      if wandb_project:
        self._wandb = _wandb_run(workdir, wandb_project, dict(hparams or {}))

  def _write_hparams(self, hparams: dict) -> None:
    """The hparams plugin's session record, in the run's own event files: TensorBoard gathers
    the hparams of every run under its logdir and takes the metric columns from their scalars
    (no experiment record, which one run would impose on all)."""
    from tensorboardX.summary import hparams as hparams_summary
    _, session_start, _ = hparams_summary(hparams, {})
    self._tb.file_writer.add_summary(session_start)
    self._tb.flush()

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` and eval records at `step` (a resumed run rewrites them, so the
    file matches a clean run; a rerun of a finished run validates again)."""
    if not self.enabled or not self.path.exists():
      return

    def keep(record):
      is_eval = any(k.startswith("eval/") for k in record)
      return record["step"] < step or (record["step"] == step and not is_eval)

    lines = self.path.read_text().splitlines(keepends=True)
    kept = [line for line in lines if line.strip() and keep(json.loads(line))]
    write_text_atomic(self.path, "".join(kept))

  def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}
    _append(self.path, json.dumps(record) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))
    self._tb.flush()
    if self._wandb is not None:
      self._wandb.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None
    if self._wandb is not None:
      self._wandb.finish()
      self._wandb = None


def _wandb_run(workdir: str, project: str, config: dict):
  """A W&B run whose id is fixed by the workdir, so a resumed run continues it."""
  # Imported here: dlmscale.optional pulls in dlmscale.data, which need not be loaded for metrics.
  from dlmscale.optional import require
  wandb = require("wandb", "wandb", "train.wandb_project (Weights & Biases)")
  path = os.path.abspath(workdir) if "://" not in workdir else workdir
  run_id = hashlib.sha256(path.encode()).hexdigest()[:16]
  parent, name = os.path.split(path.rstrip("/"))
  try:
    return wandb.init(
        project=project, id=run_id, resume="allow", name=f"{os.path.basename(parent)}/{name}",
        group=os.path.basename(parent), config=config,
        dir=workdir if "://" not in workdir else None,  # W&B writes local files only
        settings=wandb.Settings(console="off"))  # stdout stays ours: no capture, no rewrapping
  except wandb.errors.Error as e:
    raise ConfigError(f"train.wandb_project={project!r}: W&B did not start ({e}): run "
                      "`wandb login`, or set WANDB_MODE=offline to log locally") from None


def read_metrics(workdir: str) -> list[dict]:
  text = (epath.Path(workdir) / "metrics.jsonl").read_text()
  return [json.loads(line) for line in text.splitlines() if line.strip()]


def format_duration(seconds: float) -> str:
  if not math.isfinite(seconds):
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def progress_line(name: str, step: int, num_steps: int, loss: float, tokens_per_s: float,
                  mfu: float | None, eta_s: float, epoch: float) -> str:
  mfu_text = f"{100 * mfu:.1f}%" if mfu is not None else "n/a"
  return (f"[{name}] step {step}/{num_steps} epoch {epoch:.2f} loss {loss:.4f} "
          f"tok/s {tokens_per_s:,.0f} mfu {mfu_text} eta {format_duration(eta_s)}")
