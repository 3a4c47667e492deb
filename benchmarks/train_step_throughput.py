"""Train-step tokens/s of a model preset for each objective, and the data pipeline's tokens/s.

  python benchmarks/train_step_throughput.py --preset=tiny --seq_len=128 --batch=32

Figures from one run are comparable with each other (ratios); absolute numbers depend on the
machine, which is printed with them. Record results in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import models  # noqa: E402
from dlmscale import config as config_lib  # noqa: E402
from dlmscale import experiment, parallel, train  # noqa: E402


def time_steps(exp, steps: int) -> float:
  """Tokens/s of the compiled train step over `steps` steps (after one warm-up step)."""
  state = train.create_state(exp.model, exp.optimizer, 0, exp.shardings)
  tokens = parallel.place_batch(exp.stream.local_batch_at(0), exp.batch_sharding)
  state, metrics = exp.step_fn(state, tokens)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = exp.step_fn(state, tokens)
  jax.block_until_ready(metrics)
  return steps * exp.stream.tokens_per_step / (time.perf_counter() - start)


def time_pipeline(stream, steps: int) -> float:
  start = time.perf_counter()
  with stream.iterator(0) as it:
    for _ in range(steps):
      next(it)
  return steps * stream.tokens_per_step / (time.perf_counter() - start)


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="tiny", choices=sorted(models.PRESETS))
  ap.add_argument("--seq_len", type=int, default=128)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--objectives", default="ar,mdm,ar_input_mask,ar_dropout")
  args = ap.parse_args()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"{'objective':<15}{'step tok/s':>12}{'pipeline tok/s':>16}{'pipeline/step':>15}"
        f"{'GFLOP/s':>10}")
  for name in args.objectives.split(","):
    cfg = config_lib.default_config()
    cfg.objectives = (name,)
    cfg.model.update(models.PRESETS[args.preset])
    cfg.data.update(seq_len=args.seq_len, unique_tokens=args.seq_len * args.batch * 50,
                    total_tokens=args.seq_len * args.batch * (args.steps + 10))
    cfg.train.global_batch = args.batch
    exp = experiment.build_experiment(cfg, name)
    step_tps = time_steps(exp, args.steps)
    pipe_tps = time_pipeline(exp.stream, args.steps)
    gflops = step_tps * exp.flops_per_token / 1e9
    print(f"{name:<15}{step_tps:>12,.0f}{pipe_tps:>16,.0f}{pipe_tps / step_tps:>14,.0f}x"
          f"{gflops:>10.1f}", flush=True)
  print(f"model: {args.preset} {exp.model.param_counts()}, batch {args.batch} x {args.seq_len}")


if __name__ == "__main__":
  main()
