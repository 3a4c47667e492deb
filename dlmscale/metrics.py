"""Metrics sinks: JSONL and TensorBoard event files in the workdir, and the progress line."""
from __future__ import annotations

import json
import math
import os
import tempfile


def _atomic_write(path: str, text: str) -> None:
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
  with os.fdopen(fd, "w") as f:
    f.write(text)
  os.replace(tmp, path)


class MetricsWriter:
  """Appends {step, **scalars} records to metrics.jsonl and TensorBoard; main process only."""

  def __init__(self, workdir: str, *, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      from tensorboardX import SummaryWriter  # imported lazily: only the main process writes
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def truncate_after(self, step: int) -> None:
    """Drops records past `step` and eval records at `step` (a resumed run rewrites them, so the
    file matches a clean run; a rerun of a finished run validates again)."""
    if not self.enabled or not os.path.exists(self.path):
      return

    def keep(record):
      is_eval = any(k.startswith("eval/") for k in record)
      return record["step"] < step or (record["step"] == step and not is_eval)

    with open(self.path) as f:
      kept = [line for line in f if line.strip() and keep(json.loads(line))]
    _atomic_write(self.path, "".join(kept))

  def write(self, step: int, scalars: dict, prefix: str = "train") -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{f"{prefix}/{k}": float(v) for k, v in scalars.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in scalars.items():
      self._tb.add_scalar(f"{prefix}/{k}", float(v), int(step))
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


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
