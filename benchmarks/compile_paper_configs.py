"""Compiles the paper's dense train steps for v5p slices with libtpu on this host (no TPU).

  python benchmarks/compile_paper_configs.py [--objectives=ar,mdm] [--cases=1b_dp,8b_fsdp_remat]
      [--attention=auto,einsum]

The default runs every case in CASES; 1b_dp_remat_unrolled alone takes ~9 min on 2 CPU cores.

Per case: per-chip memory, whether it fits the chip's HBM, and the compiler's FLOPs per chip per
step against the analytic 6N + attention count. Record results in BENCHMARKS.md ("TPU compile";
the 8b1a_* MoE dispatch cases in "Dropless MoE on TPU", 8-18 min each on 2 loaded cores).
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # the compile-only devices come from libtpu
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import meshes, models  # noqa: E402
from dlmscale import compile as compile_lib  # noqa: E402
from dlmscale.config import default_config  # noqa: E402

EXPERT8 = dict(data=-1, fsdp=1, tensor=1, expert=8)
# name: (model preset, global batch, topology, mesh, remat); sequences of 2048 tokens.
CASES = {
    "1b_dp": (models.PAPER_1B, 256, "v5p-64", meshes.DATA_PARALLEL, "none"),
    "1b_dp_remat": (models.PAPER_1B, 256, "v5p-64", meshes.DATA_PARALLEL, "full"),
    "1b_dp_remat_minimal": (models.PAPER_1B, 256, "v5p-64", meshes.DATA_PARALLEL, "minimal"),
    "1b_fsdp_remat": (models.PAPER_1B, 256, "v5p-64", meshes.FSDP, "full"),
    "8b_fsdp_remat": (models.DENSE_8B, 1024, "v5p-128", meshes.FSDP, "full"),
    # 8B1A (data x expert 8) with each dispatch; experiments/moe_1b.py ships dropless_gather.
    "8b1a_capacity": (dict(models.PAPER_8B1A, moe_dispatch="capacity"), 256, "v5p-64",
                      EXPERT8, "full"),
    "8b1a_dropless": (dict(models.PAPER_8B1A, moe_dispatch="dropless"), 256, "v5p-64",
                      EXPERT8, "full"),
    "8b1a_fsdp_capacity": (dict(models.PAPER_8B1A, moe_dispatch="capacity"), 256, "v5p-64",
                           dict(data=1, fsdp=-1, tensor=1, expert=8), "full"),
    # Dropless built for TPU (dlmscale/models/moe_tpu.py): megablox grouped matmuls per chip.
    "8b1a_dropless_a2a": (dict(models.PAPER_8B1A, moe_dispatch="dropless_a2a"), 256, "v5p-64",
                          EXPERT8, "full"),
    "8b1a_dropless_gather": (dict(models.PAPER_8B1A, moe_dispatch="dropless_gather"), 256,
                             "v5p-64", EXPERT8, "full"),
    # FLOPs checks: 2 of the 26 layers, unrolled (a scanned loop's body is counted once).
    "8b1a_l2_dropless_unrolled": (dict(models.PAPER_8B1A, moe_dispatch="dropless",
                                       num_layers=2), 256, "v5p-64", EXPERT8, "full"),
    "8b1a_l2_capacity_unrolled": (dict(models.PAPER_8B1A, moe_dispatch="capacity",
                                       num_layers=2), 256, "v5p-64", EXPERT8, "full"),
    "8b1a_l2_dropless_a2a_unrolled": (dict(models.PAPER_8B1A, moe_dispatch="dropless_a2a",
                                           num_layers=2), 256, "v5p-64", EXPERT8, "full"),
    "8b1a_l2_dropless_gather_unrolled": (dict(models.PAPER_8B1A, moe_dispatch="dropless_gather",
                                              num_layers=2), 256, "v5p-64", EXPERT8, "full"),
    # XLA's cost analysis counts a scanned layer loop's body once: unrolled for the FLOPs check.
    "1b_dp_remat_unrolled": (models.PAPER_1B, 256, "v5p-64", meshes.DATA_PARALLEL, "full"),
}

SUMMARY = ("case", "topology", "objective", "attention", "attention_kernel", "params", "remat",
           "batch_per_chip", "memory_per_chip", "fits", "compiler_flops_per_chip",
           "analytic_flops_per_chip", "compiler_over_analytic",
           "compiler_over_analytic_without_head", "compiler_over_analytic_without_attention",
           "compile_s", "error")


def without_head(report: dict, cfg) -> float | None:
  """Compiler / analytic FLOPs with the LM head's 6 D V per token left out of the analytic count:
  the chunked cross-entropy (dlmscale/models/cross_entropy.py) runs the head in a loop over
  sequence chunks, whose body XLA's cost analysis counts once, so the compiler sees ~no head."""
  if "compiler_flops_per_chip" not in report or not cfg.model.vocab_size:
    return None  # no compile, or a tokenizer-sized vocabulary this script does not resolve
  head = 6.0 * cfg.model.d_model * cfg.model.vocab_size * cfg.train.global_batch * cfg.data.seq_len
  layers = report["analytic_flops_per_chip"] - head / report["chips"]
  return report["compiler_flops_per_chip"] / layers


def case_config(name: str, preset: dict, global_batch: int, mesh: dict, remat: str,
                attention: str = "auto"):
  c = default_config()
  c.model.update(preset)
  c.model.remat, c.model.attention = remat, attention
  c.model.scan_layers = not name.endswith("_unrolled")
  c.data.update(seq_len=2048, total_tokens=100 * global_batch * 2048)
  c.train.update(global_batch=global_batch)
  c.mesh.update(mesh)
  return c


def moe_layer_flops(dispatch: str, tokens: int) -> dict:
  """The 8B1A's routed experts alone (moe_tpu.dispatch, gradients of x and the weights, no remat)
  compiled for v5p-64 data 4 x expert 8: compiler FLOPs per chip over the grouped matmuls' real
  work, 3 matmuls x (forward + 2 backward) x 2 T k D F per chip."""
  import jax
  import jax.numpy as jnp
  from jax.sharding import NamedSharding, PartitionSpec as P

  from dlmscale import parallel
  from dlmscale.models import moe_tpu
  e, d, f, k = (models.PAPER_8B1A[n] for n in ("num_experts", "d_model", "moe_d_ff",
                                               "experts_per_token"))
  topo = compile_lib.get_topology("v5p-64")
  mesh = parallel.make_mesh(EXPERT8, compile_lib.topology_devices(topo))
  rules = parallel.DEFAULT_RULES

  def grads(x, weights, experts, wg, wu, wd):
    def loss(x, wg, wu, wd):
      with parallel.activation_sharding(mesh, rules):
        return moe_tpu.dispatch(dispatch, x, weights, experts, wg, wu, wd).sum(dtype=jnp.float32)
    return jax.grad(loss, argnums=(0, 1, 2, 3))(x, wg, wu, wd)

  tok, w = NamedSharding(mesh, P(("data", "expert"))), NamedSharding(mesh, P("expert"))
  arg = lambda shape, dtype, sh: jax.ShapeDtypeStruct(shape, dtype, sharding=sh)
  args = (arg((tokens, d), jnp.bfloat16, tok), arg((tokens, k), jnp.float32, tok),
          arg((tokens, k), jnp.int32, tok), arg((e, d, f), jnp.bfloat16, w),
          arg((e, d, f), jnp.bfloat16, w), arg((e, f, d), jnp.bfloat16, w))
  start = time.time()
  cost = jax.jit(grads).lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  routed = 3 * 3 * 2 * (tokens // topo.chips) * k * d * f
  return {"moe_layer": dispatch, "tokens": tokens, "compiler_flops_per_chip": cost["flops"],
          "routed_flops_per_chip": routed, "ratio": cost["flops"] / routed,
          "compile_s": time.time() - start}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--objectives", default="ar")
  parser.add_argument("--cases", default=",".join(CASES))
  parser.add_argument("--attention", default="auto",
                      help="model.attention values to compile each case with (auto: splash on TPU)")
  parser.add_argument("--json", default="", help="also write the reports to this file")
  parser.add_argument("--moe_layer", default="",
                      help="instead: compile the 8B1A's routed experts alone with these "
                           "dispatches (e.g. dropless_gather,dropless_a2a)")
  parser.add_argument("--moe_layer_tokens", type=int, default=32768)
  args = parser.parse_args()
  if args.moe_layer:
    for dispatch in args.moe_layer.split(","):
      print(json.dumps(moe_layer_flops(dispatch, args.moe_layer_tokens)), flush=True)
    return
  reports = []
  for name in args.cases.split(","):
    preset, batch, topology, mesh, remat = CASES[name]
    for objective, attention in itertools.product(args.objectives.split(","),
                                                  args.attention.split(",")):
      cfg = case_config(name, preset, batch, mesh, remat, attention)
      start = time.time()
      try:
        r = compile_lib.compile_for_topology(cfg, objective, topology, check_fit=False)
      except compile_lib.DoesNotFitError as e:  # the compiler itself refused: no memory numbers
        r = {"topology": topology, "objective": objective, "fits": False, "error": str(e),
             "compile_s": time.time() - start}
      r["case"], r["attention"] = name, attention
      r["compiler_over_analytic_without_head"] = without_head(r, cfg)
      reports.append(r)
      print(json.dumps({k: r.get(k) for k in SUMMARY}), flush=True)
  print(compile_lib.format_table([r for r in reports if "error" not in r]))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(reports, f, indent=1)


if __name__ == "__main__":
  main()
