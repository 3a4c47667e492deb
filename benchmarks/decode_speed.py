"""Decoding speed: the AR decode step against its cache length, and DLM fast samplers.

  python benchmarks/decode_speed.py ar --baseline_rev=<commit>
  python benchmarks/decode_speed.py dlm [--workdir=<a trained DLM run>]

ar: ms per decode step of `--preset` (random weights) at each cache length, for this checkout and
for `--baseline_rev` (its dlmscale/ and configs/ extracted by `git archive`), each measured in its
own subprocess, alternating A B A B so both see the same machine load; the fastest run per cell
is kept. Two timings per cell: `jax.jit(model.decode_step)` called alone (no donation, so the
returned cache is a fresh copy) and a step inside a jitted loop of decode steps (the cache a loop
carry, as in ar_generate), against the step's FLOPs (inference_cost.forward_flops) and the least
it must move (parameters and cache read once). Both trees also decode the same prompts greedily
with ar_generate and the tokens are compared.

dlm: dlm_generate's one-token-per-step sampler against confidence-threshold decoding and the
prefix / dual block caches on the same prompts: tokens/s, tokens per forward pass, the exact
match rate of the generated ids against the one-token-per-step sampler's, and (with --workdir, a
trained DLM run) the held-out continuation accuracy: greedy completions of held-out validation
rows scored by their token accuracy against the true continuation.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # an installed libtpu would otherwise be probed
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def best_ms(fn, repeats: int, min_total_s: float) -> float:
  """Fastest of at least `repeats` timed calls lasting min_total_s in all, after one call that
  compiles (the minimum discards time lost to other jobs on a shared machine)."""
  import jax
  jax.block_until_ready(fn())
  times = []
  while len(times) < repeats or sum(times) < min_total_s:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times) * 1e3


# ---- ar: the decode step -------------------------------------------------------------------------

def ar_worker(args) -> dict:
  """Run inside one tree (its dlmscale on sys.path): per cache length the two step timings and
  XLA's flops/bytes, then greedy ar_generate tokens. Printed as one JSON line."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  from configs import models
  from dlmscale.models.model import build_model
  from dlmscale.evaluation import inference_cost as ic
  from dlmscale.models.transformer import ModelConfig
  from dlmscale.sampling import ar_generate

  cfg = ModelConfig(**dict(models.PRESETS[args.preset], vocab_size=args.vocab_size,
                           scan_layers=args.scan))
  model = build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(0))
  b, loop = args.batch, args.loop_steps
  token_B = jnp.ones((b,), jnp.int32)
  step = jax.jit(model.decode_step)

  @jax.jit
  def decode_loop(params, cache, token_B):
    def body(_, carry):
      cache, token_B = carry
      logits_BxV, cache = model.decode_step(params, cache, token_B)
      return cache, jnp.argmax(logits_BxV, -1).astype(jnp.int32)
    return jax.lax.fori_loop(0, loop, body, (cache, token_B))[1]

  params_bytes = sum(a.nbytes for a in jax.tree.leaves(params))
  rows = []
  for slots in args.slots:
    # The last `loop` slots are free for the loop's writes; every step attends all slots.
    cache = dict(model.init_cache(b, slots), index=jnp.int32(max(slots - loop, 0)))
    alone = best_ms(lambda: step(params, cache, token_B), args.repeats, args.min_total_s)
    looped = best_ms(lambda: decode_loop(params, cache, token_B), args.repeats,
                     args.min_total_s) / loop
    cache_bytes = sum(cache[k].nbytes for k in ("k", "v"))
    # The least a step can move: every parameter and the whole cache read once.
    rows.append(dict(slots=slots, alone_ms=alone, loop_ms=looped,
                     flops=b * ic.forward_flops(cfg, 1, slots), cache_bytes=cache_bytes,
                     bytes=params_bytes + cache_bytes))
    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
  rng = np.random.default_rng(0)
  prompts_BxP = rng.integers(0, cfg.vocab_size - 2, (b, 8)).astype(np.int32)
  tokens = ar_generate(model, params, prompts_BxP, max_new_tokens=args.greedy_tokens,
                       key=jax.random.key(0), eod_id=cfg.vocab_size - 1).tokens
  return dict(rows=rows, tokens=np.asarray(tokens).tolist())


def run_tree(tree: str, args) -> dict:
  """ar_worker in a subprocess with `tree` first on the path."""
  cmd = [sys.executable, os.path.abspath(__file__), "_ar_worker", "--preset", args.preset,
         "--vocab_size", str(args.vocab_size), "--batch", str(args.batch),
         "--slots", ",".join(map(str, args.slots)), "--loop_steps", str(args.loop_steps),
         "--repeats", str(args.repeats), "--min_total_s", str(args.min_total_s),
         "--greedy_tokens", str(args.greedy_tokens), "--scan", str(int(args.scan))]
  env = dict(os.environ, PYTHONPATH=tree)
  out = subprocess.run(cmd, env=env, cwd=tree, check=True, stdout=subprocess.PIPE, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def ar_main(args) -> None:
  with tempfile.TemporaryDirectory() as tmp:
    archive = subprocess.run(["git", "-C", ROOT, "archive", args.baseline_rev, "dlmscale",
                              "configs"], check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", tmp], input=archive, check=True)
    trees = {"before": tmp, "after": ROOT}
    runs = {name: [] for name in trees}
    for _ in range(args.rounds):  # A B A B: both trees see the same load
      for name, tree in trees.items():
        print(f"[{name}] {tree}", file=sys.stderr, flush=True)
        runs[name].append(run_tree(tree, args))
  best = {name: [{k: min(r["rows"][i][k] for r in rs) if k.endswith("_ms") else rs[0]["rows"][i][k]
                  for k in rs[0]["rows"][i]} for i in range(len(args.slots))]
          for name, rs in runs.items()}
  same = sum(a == b for a, b in zip(runs["before"][0]["tokens"], runs["after"][0]["tokens"]))
  print(f"## AR decode step: {args.preset}, vocabulary {args.vocab_size}, batch {args.batch}, "
        f"scan_layers={args.scan}; before = {args.baseline_rev[:10]}, after = this checkout")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus; fastest "
        f"of {args.rounds} alternating runs x >= {args.repeats} calls; loop = {args.loop_steps} "
        "steps in one jitted fori_loop\n")
  print("| cache slots | step alone, before ms | after ms | step in loop, before ms | after ms "
        "| MFLOP / step | KV cache MB | params + cache MB | in loop, before GB/s | after GB/s |")
  print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for b_row, a_row in zip(best["before"], best["after"]):
    gbps = lambda row: row["bytes"] / row["loop_ms"] / 1e6
    print(f"| {a_row['slots']} | {b_row['alone_ms']:.2f} | {a_row['alone_ms']:.2f} "
          f"| {b_row['loop_ms']:.3f} | {a_row['loop_ms']:.3f} | {a_row['flops'] / 1e6:.1f} "
          f"| {a_row['cache_bytes'] / 1e6:.1f} | {a_row['bytes'] / 1e6:.1f} "
          f"| {gbps(b_row):.1f} | {gbps(a_row):.1f} |")
  print(f"\ngreedy ar_generate ({args.greedy_tokens} tokens x {args.batch} rows): "
        f"{same}/{args.batch} rows identical before and after")


# ---- dlm: fast samplers against the one-token-per-step sampler -----------------------------------

DLM_SAMPLERS = (  # (name, dlm_generate options); the first is the reference
    ("one per step", dict()),
    ("threshold 1.0", dict(threshold=1.0)),
    ("one per step + dual cache", dict(cache="dual")),
    ("threshold 0.9", dict(threshold=0.9)),
    ("threshold 0.9 + prefix cache", dict(threshold=0.9, cache="prefix")),
    ("threshold 0.9 + dual cache", dict(threshold=0.9, cache="dual")),
    ("threshold 0.7 + dual cache", dict(threshold=0.7, cache="dual")),
    ("threshold 0.5 + dual cache", dict(threshold=0.5, cache="dual")),
    ("threshold 0.3 + dual cache", dict(threshold=0.3, cache="dual")),
)


def heldout_rows(lm, rows: int, context: int, gen: int, seed: int = 0):
  """(contexts_NxC, truths_NxG): seeded held-out validation rows (never trained on) whose first
  context + gen tokens hold no eod or mask id."""
  import numpy as np
  from dlmscale.data import ensure_prepared
  val = ensure_prepared(lm.cfg.data).val
  order = np.random.default_rng(seed).permutation(val.shape[0])
  picked = []
  for start in range(0, len(order), 256):
    chunk = np.sort(order[start:start + 256])
    window = np.asarray(val[chunk])[:, :context + gen]
    tok = lm.tokenizer
    clean = ~np.isin(window, [tok.eod_id, tok.mask_id]).any(1)
    picked += list(window[clean])
    if len(picked) >= rows:
      break
  picked = np.stack(picked[:rows]).astype(np.int32)
  return picked[:, :context], picked[:, context:]


def dlm_main(args) -> None:
  import jax
  import numpy as np
  from dlmscale.config_files import saved_config
  from dlmscale.experiment import load_model
  from dlmscale.sampling import dlm_generate
  from dlmscale.sampling.text import banned_ids

  cfg = saved_config(os.path.join(args.workdir, args.objective, "config.json"))
  lm = load_model(cfg, args.workdir, args.objective)
  contexts_NxC, truths_NxG = heldout_rows(lm, args.rows, args.context, args.gen_length)
  tok = lm.tokenizer
  batches = [contexts_NxC[i:i + args.batch] for i in range(0, len(contexts_NxC), args.batch)]

  def generate(opts, batch_BxC):
    return dlm_generate(lm.model, lm.params, batch_BxC, gen_length=args.gen_length,
                        block_length=args.block_length, key=jax.random.key(0), mask_id=tok.mask_id,
                        eod_id=tok.eod_id, allow_eod=False, banned_ids=banned_ids(lm), **opts)

  results = {}
  for name, opts in DLM_SAMPLERS:
    outs = [generate(opts, b) for b in batches]  # compiles (one shape for every batch)
    ids_NxG = np.concatenate([np.asarray(o.sequences)[:, args.context:] for o in outs])
    results[name] = dict(ids=ids_NxG, passes=sum(int(o.passes) for o in outs), seconds=[])
  for _ in range(args.repeats):  # round robin: every sampler sees the same spread of load
    for name, opts in DLM_SAMPLERS:
      start = time.perf_counter()
      jax.block_until_ready([generate(opts, b).sequences for b in batches])
      results[name]["seconds"].append(time.perf_counter() - start)
      print(f"{name}: {results[name]['seconds'][-1]:.2f} s", file=sys.stderr, flush=True)
  for r in results.values():
    r["seconds"] = min(r["seconds"])
  ref = results[DLM_SAMPLERS[0][0]]
  n = len(contexts_NxC)
  print(f"## DLM decoding: {args.workdir}/{args.objective} (step {lm.step}, "
        f"{lm.model.param_counts()['total']:,} params), {n} held-out validation rows: "
        f"{args.context}-token context, {args.gen_length} generated, block_length "
        f"{args.block_length}, greedy, batch {args.batch}")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, jax "
        f"{jax.__version__}; fastest of {args.repeats} round-robin runs\n")
  print("| sampler | tokens/s | speed-up | forward passes / row | tokens / pass | rows = reference "
        "| ids = reference | held-out token accuracy |")
  print("|---|---:|---:|---:|---:|---:|---:|---:|")
  for name, _ in DLM_SAMPLERS:
    r = results[name]
    per_row = r["passes"] / len(batches)
    print(f"| {name} | {n * args.gen_length / r['seconds']:,.0f} "
          f"| {ref['seconds'] / r['seconds']:.1f}x | {per_row:.1f} "
          f"| {args.gen_length / per_row:.2f} "
          f"| {np.mean((r['ids'] == ref['ids']).all(1)):.3f} "
          f"| {np.mean(r['ids'] == ref['ids']):.3f} | {np.mean(r['ids'] == truths_NxG):.3f} |")


# ---- cli -----------------------------------------------------------------------------------------

def ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def main() -> None:
  ap = argparse.ArgumentParser()
  sub = ap.add_subparsers(dest="what", required=True)
  for name in ("ar", "_ar_worker"):
    p = sub.add_parser(name)
    p.add_argument("--preset", default="small_cpu")
    p.add_argument("--vocab_size", type=int, default=2048)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--slots", type=ints, default=[16, 128, 512, 1024])
    p.add_argument("--loop_steps", type=int, default=16)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min_total_s", type=float, default=1.0)
    p.add_argument("--greedy_tokens", type=int, default=48)
    p.add_argument("--scan", type=int, default=1, help="model.scan_layers")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--baseline_rev", default="697de1922a7d",
                   help="the tree to compare with (default: the last commit before the fix)")
  p = sub.add_parser("dlm")
  p.add_argument("--workdir", default=os.path.join(ROOT, "runs", "quickstart"),
                 help="a trained run holding <objective>/config.json and checkpoints")
  p.add_argument("--objective", default="mdm")
  p.add_argument("--rows", type=int, default=64)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--context", type=int, default=64)
  p.add_argument("--gen_length", type=int, default=64)
  p.add_argument("--block_length", type=int, default=16)
  p.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args()
  if args.what == "dlm":
    sys.path.insert(0, ROOT)
    dlm_main(args)
  elif args.what == "_ar_worker":
    sys.path.insert(0, os.getcwd())
    print(json.dumps(ar_worker(args)))
  elif args.what == "ar":
    ar_main(args)


if __name__ == "__main__":
  main()
