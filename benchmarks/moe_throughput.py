"""Train-step tokens/s of a tiny dense model vs tiny MoEs of the same active width, dropless vs
capacity dispatch, for ar and mdm, in one run.

  python benchmarks/moe_throughput.py --seq_len=128 --batch=32 --steps=20

Every MoE row keeps top-k x expert width = the dense d_ff (192), so all rows do about the same
matmul FLOPs per token; the MoE rows add routing, sorting/gathering (dropless) or one-hot
dispatch/combine einsums (capacity). Ratios within one run are the result; absolute numbers
depend on the machine printed with them. Record results in BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # an installed libtpu would otherwise be probed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402

from configs import models  # noqa: E402
from dlmscale import config as config_lib  # noqa: E402
from dlmscale import experiment  # noqa: E402
from train_throughput import time_steps  # noqa: E402  (this directory is sys.path[0])

# name: model overrides on top of the tiny preset (d_model 64, 2 layers, d_ff 192).
CASES = {
    "dense": {},
    "e4k1_dropless": dict(num_experts=4, experts_per_token=1, moe_d_ff=192),
    "e4k1_capacity": dict(num_experts=4, experts_per_token=1, moe_d_ff=192,
                          moe_dispatch="capacity"),
    "e8k2_dropless": dict(num_experts=8, experts_per_token=2, moe_d_ff=96),
    "e8k2_capacity": dict(num_experts=8, experts_per_token=2, moe_d_ff=96,
                          moe_dispatch="capacity"),
}


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--seq_len", type=int, default=128)
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--objectives", default="ar,mdm")
  ap.add_argument("--cases", default=",".join(CASES))
  args = ap.parse_args()
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}")
  print(f"{'case':<16}{'objective':<10}{'total':>9}{'active':>9}{'MFLOP/tok':>11}"
        f"{'step tok/s':>12}{'vs dense':>10}")
  for name in args.objectives.split(","):
    dense_tps = None
    for case in args.cases.split(","):
      cfg = config_lib.default_config()
      cfg.objectives = (name,)
      cfg.model.update(models.TINY)
      cfg.model.update(CASES[case])
      cfg.data.update(seq_len=args.seq_len, unique_tokens=args.seq_len * args.batch * 50,
                      total_tokens=args.seq_len * args.batch * (args.steps + 10))
      cfg.train.global_batch = args.batch
      exp = experiment.build_experiment(cfg, name)
      tps = time_steps(exp, args.steps)
      dense_tps = dense_tps or (tps if case == "dense" else None)
      counts = exp.model.param_counts()
      ratio = f"{tps / dense_tps:>9.2f}x" if dense_tps else f"{'':>10}"
      print(f"{case:<16}{name:<10}{counts['total']:>9,}{counts.get('active', counts['total']):>9,}"
            f"{exp.flops_per_token / 1e6:>11.2f}{tps:>12,.0f}{ratio}", flush=True)
  print(f"batch {args.batch} x {args.seq_len}, {args.steps} timed steps after one warm-up step; "
        "capacity factor 1.25")


if __name__ == "__main__":
  main()
