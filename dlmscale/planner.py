"""The planner: what a run (or a study's grid) costs, before anything runs.

Per run: parameters (total / active), training FLOPs per token (a DLM attends over the whole
sequence, an AR model over the causal half), steps, tokens, epochs, training FLOPs, and chip-hours
on an accelerator at a stated MFU (model FLOPs utilisation). Pure arithmetic on the config; the
per-chip memory comes from compile mode when asked for.
"""
from __future__ import annotations

import dataclasses
import re

from dlmscale import config as config_lib
from dlmscale import flops, objectives
from dlmscale.compile import TOPOLOGIES
from dlmscale.errors import ConfigError
from dlmscale.models.model import build_model

# GPUs by the names users write (8xH100); peaks are dense bf16 from dlmscale.flops.
GPUS = {"h100": "NVIDIA H100", "h200": "NVIDIA H200", "a100": "NVIDIA A100"}


@dataclasses.dataclass(frozen=True)
class Accelerator:
  name: str  # as given: v5p-128, 8xH100
  chips: int
  peak_flops_per_chip: float


def accelerator(name: str) -> Accelerator:
  """A TPU slice (v5p-128, from compile.TOPOLOGIES) or GPUs (8xH100, H200, 64xA100)."""
  gpu = re.fullmatch(r"(?:(\d+)x)?(h100|h200|a100)", name.lower())
  if gpu:
    count = int(gpu.group(1) or 1)
    return Accelerator(name, count, flops.PEAK_FLOPS[GPUS[gpu.group(2)]])
  if name not in TOPOLOGIES:
    raise ConfigError(f"unknown accelerator {name!r}: use a TPU slice ({', '.join(TOPOLOGIES)}) "
                      f"or GPUs such as 8xH100 ({', '.join(g.upper() for g in GPUS)})")
  topo = TOPOLOGIES[name]
  return Accelerator(name, topo.chips, topo.peak_flops_per_chip)


def plan_run(cfg, name: str, accel: Accelerator | None, mfu: float, vocab_size: int) -> dict:
  """The cost of training cfg's first objective; chip-hours when an accelerator is given."""
  if not 0 < mfu <= 1:
    raise ConfigError(f"--mfu={mfu} must be in (0, 1], e.g. 0.4")
  config_lib.validate(cfg)
  objective = config_lib.objective_names(cfg)[0]
  model = build_model(config_lib.model_config(cfg, vocab_size))
  counts = model.param_counts()
  d, t = cfg.data, cfg.train
  tokens_per_step = t.global_batch * d.seq_len
  steps = max(1, d.total_tokens // tokens_per_step)
  tokens = steps * tokens_per_step
  causal = objectives.kind_of(objective) == "ar"
  per_token = flops.train_flops_per_token(model.cfg, d.seq_len, causal=causal)
  row = {"run": name, "objective": objective, "params": counts["total"],
         "active_params": counts.get("active", counts["total"]), "seq_len": d.seq_len,
         "global_batch": t.global_batch, "flops_per_token": per_token, "steps": steps,
         "tokens": tokens, "unique_tokens": d.unique_tokens, "epochs": tokens / d.unique_tokens,
         "train_flops": per_token * tokens, "mfu": mfu}
  if accel:
    chip_seconds = row["train_flops"] / (accel.peak_flops_per_chip * mfu)
    row.update(accelerator=accel.name, chips=accel.chips, chip_hours=chip_seconds / 3600,
               wall_hours=chip_seconds / 3600 / accel.chips)
  return row


def _si(x: float) -> str:
  for unit, scale in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("k", 1e3)):
    if abs(x) >= scale:
      return f"{x / scale:.3g}{unit}"
  return f"{x:.3g}"


def format_plan(rows: list[dict]) -> str:
  """One line per run, then the total FLOPs and chip-hours."""
  header = ("run", "obj", "params", "active", "FLOP/tok", "steps", "tokens", "epochs",
            "train FLOPs", "chip-h", "days", "mem GiB/chip")
  table = [header]
  for r in rows:
    mem = r.get("memory_per_chip_gib")
    table.append((r["run"], r["objective"], _si(r["params"]), _si(r["active_params"]),
                  _si(r["flops_per_token"]), f"{r['steps']:,}", _si(r["tokens"]),
                  f"{r['epochs']:.3g}", f"{r['train_flops']:.3g}",
                  f"{r['chip_hours']:,.0f}" if "chip_hours" in r else "-",
                  f"{r['wall_hours'] / 24:.1f}" if "wall_hours" in r else "-",
                  "-" if mem is None else f"{mem:.1f}"))
  widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
  lines = ["  ".join(str(c).rjust(w) if i else str(c).ljust(w)
                     for i, (c, w) in enumerate(zip(row, widths))) for row in table]
  total_flops = sum(r["train_flops"] for r in rows)
  total = f"total: {len(rows)} runs, {total_flops:.3g} training FLOPs"
  if rows and "chip_hours" in rows[0]:
    r0 = rows[0]
    total += (f", {sum(r['chip_hours'] for r in rows):,.0f} chip-hours on {r0['accelerator']} "
              f"({r0['chips']} chips) at {r0['mfu']:.0%} MFU")
  return "\n".join(lines + [total])
