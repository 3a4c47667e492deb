"""An experiment trains every configured objective on the same token stream and compares them."""
from __future__ import annotations

import json
import logging
import os
import time

import jax

from dlmscale import config as config_lib
from dlmscale.evaluation.multiple_choice import format_table as task_table
from dlmscale.runner import Preempted, build_experiment, evaluate, restore_params, run_training

__all__ = ["Preempted", "train_all", "evaluate_all", "format_table"]
log = logging.getLogger("dlmscale")


def _announce(exp) -> None:
  if jax.process_index():
    return
  counts = exp.model.param_counts()
  s = exp.stream.summary()
  print(f"[{exp.objective}] params {counts['total']:,} total, {counts['non_embedding']:,} "
        f"non-embedding | mesh {dict(exp.mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} devices, {jax.process_count()} process(es)", flush=True)
  print(f"[{exp.objective}] data: unique U={s['unique_tokens_actual']:,} tokens "
        f"(asked {s['unique_tokens_requested']:,}), total T={s['total_tokens_actual']:,} "
        f"(asked {s['total_tokens_requested']:,}), {s['num_epochs']:.2f} epochs, "
        f"{s['num_steps']} steps of {exp.stream.tokens_per_step:,} tokens, "
        f"stream {s['fingerprint'][:16]}", flush=True)


def train_all(cfg, workdir: str) -> list[dict]:
  """Trains each objective into workdir/<objective>; prints and saves the comparison table."""
  results = []
  for name in config_lib.objective_names(cfg):
    exp = build_experiment(cfg, name)
    _announce(exp)
    start = time.time()
    result = run_training(exp, os.path.join(workdir, name))
    result["wall_s"] = time.time() - start
    results.append(result)
  _report(results, workdir, "results.json")
  return results


def evaluate_all(cfg, workdir: str) -> list[dict]:
  """Validates the latest checkpoint of each objective in workdir/<objective> and scores the
  configured tasks (eval.tasks)."""
  results = []
  for name in config_lib.objective_names(cfg):
    exp = build_experiment(cfg, name)
    params, step = restore_params(exp, os.path.join(workdir, name))
    results.append({"objective": name, "steps": step,
                    "tokens_seen": step * exp.stream.tokens_per_step,
                    "epochs": exp.stream.epoch_at(step), **evaluate(exp, params, step)})
  _report(results, workdir, "eval.json")
  return results


def _report(results, workdir, filename) -> None:
  if jax.process_index():
    return
  print(format_table(results), flush=True)
  path = os.path.join(workdir, filename)
  with open(path + ".tmp", "w") as f:
    json.dump(results, f, indent=1)
  os.replace(path + ".tmp", path)


def format_table(results: list[dict]) -> str:
  """Side-by-side table: tokens seen, epochs, AR validation NLL, DLM validation ELBO bound."""
  header = (f"{'objective':<14}{'tokens seen':>14}{'epochs':>9}{'AR val NLL':>18}"
            f"{'DLM val ELBO':>18}{'wall':>9}")
  lines = [header, "-" * len(header)]
  for r in results:
    cells = {"nll": "-", "elbo": "-"}
    if "val_mean" in r:
      cells[r["val_kind"]] = f"{r['val_mean']:.4f}±{r['val_stderr']:.4f}"
    wall = f"{r['wall_s']:.0f}s" if "wall_s" in r else "-"
    lines.append(f"{r['objective']:<14}{r['tokens_seen']:>14,}{r['epochs']:>9.2f}"
                 f"{cells['nll']:>18}{cells['elbo']:>18}{wall:>9}")
  lines.append("(nats per token on held-out sequences; the ELBO is an upper bound on the DLM's NLL)")
  for r in results:
    if r.get("tasks"):
      lines += ["", f"{r['objective']} at step {r['steps']}:", task_table(r["tasks"])]
  return "\n".join(lines)
