"""Data pipeline vs train step tokens/s, and prepare's MB/s, in one run.

  python benchmarks/data_pipeline.py [--json=results.json]

1. Pipeline: TokenStream over the prepared stdlib, the split read into memory once (the
   default for splits up to data.in_memory_mb) or every batch read from the ArrayRecord shards,
   through stream.iterator(prefetch, workers) with 0 workers (a prefetch thread) and 2 (Grain
   worker processes); the tiny config's batch and a larger one; first batch kept apart.
2. The tiny config's train step tokens/s in the same process, the pipeline/step ratio, and the
   real loop (iterator -> place_batch -> step) against a constant pre-placed batch.
3. Prepare MB/s of source text (byte and SentencePiece tokenizers, 1 and 2 workers), whether
   the outputs are byte-identical across worker counts, and a cProfile of the byte prepare.

Figures are comparable within one run (ratios); the machine is printed with them.
"""
from __future__ import annotations

import argparse
import cProfile
import copy
import hashlib
import importlib.util
import json
import os
import platform
import pstats
import shutil
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # noqa: E402

from dlmscale import experiment, parallel, train  # noqa: E402
from dlmscale.data import ensure_prepared, prepare  # noqa: E402
from train_throughput import time_steps  # noqa: E402  (benchmarks/ is on sys.path)


def tiny_config():
  spec = importlib.util.spec_from_file_location("tiny", os.path.join(ROOT, "tests/configs/tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def machine() -> dict:
  model = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    model = platform.processor() or platform.machine()
  return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "jax": jax.__version__,
          "python": platform.python_version(), "devices": f"{jax.device_count()} x "
          f"{jax.devices()[0].device_kind}", "loadavg_at_start": os.getloadavg()[0]}


# ---- 1. pipeline -------------------------------------------------------------------------
def with_steps(cfg, steps: int, batch: int | None = None, seq_len: int | None = None,
               unique: int | None = None):
  """A copy of cfg whose stream has `steps` steps (total_tokens is not part of prepare)."""
  cfg = copy.deepcopy(cfg)
  if batch:
    cfg.train.global_batch = batch
  if seq_len:
    cfg.data.seq_len = seq_len
  if unique:
    cfg.data.unique_tokens = unique
  cfg.data.total_tokens = steps * cfg.train.global_batch * cfg.data.seq_len
  return cfg


def time_pipeline(stream, workers: int, steps: int, prefetch: int) -> dict:
  """First-batch latency (iterator start included) and tokens/s of the batches after it."""
  start = time.perf_counter()
  with stream.iterator(0, prefetch=prefetch, workers=workers) as it:
    next(it)
    first = time.perf_counter()
    for _ in range(steps - 1):
      next(it)
    end = time.perf_counter()
  return {"first_batch_s": first - start,
          "tokens_per_s": (steps - 1) * stream.tokens_per_step / (end - first)}


# ---- 2. step and overlap -----------------------------------------------------------------
time_step = time_steps  # same measurement as benchmarks/train_throughput.py


def time_loop(exp, steps: int, workers: int, prefetch: int) -> float:
  """Tokens/s of the runner's loop shape: next(iterator) -> place_batch -> step, no blocking.

  The iterator is started and one step compiled before timing, so only steady state counts.
  """
  state = train.create_state(exp.model, exp.optimizer, 0, exp.shardings)
  with exp.stream.iterator(0, prefetch=prefetch, workers=workers) as it:
    state, metrics = exp.step_fn(state, parallel.place_batch(next(it), exp.batch_sharding))
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(steps):
      state, metrics = exp.step_fn(state, parallel.place_batch(next(it), exp.batch_sharding))
    jax.block_until_ready(metrics)
  return steps * exp.stream.tokens_per_step / (time.perf_counter() - start)


# ---- 3. prepare --------------------------------------------------------------------------
def dir_digest(path: str) -> str:
  """sha256 over every file's name and bytes (shards, meta.json, tokenizer.model)."""
  h = hashlib.sha256()
  for name in sorted(os.listdir(path)):
    h.update(name.encode() + b"\x00")
    with open(os.path.join(path, name), "rb") as f:
      h.update(f.read())
  return h.hexdigest()


def time_prepare(data_cfg, workers: int, tmp: str, label: str) -> dict:
  out = os.path.join(tmp, f"{label}-w{workers}")
  start = time.perf_counter()
  meta = prepare(data_cfg, out, workers=workers, records_per_shard=data_cfg.records_per_shard)
  wall = time.perf_counter() - start
  return {"setting": label, "workers": workers, "seconds": wall,
          "mb": meta["num_text_bytes"] / 1e6, "mb_per_s": meta["num_text_bytes"] / 1e6 / wall,
          "train_sequences": meta["splits"]["train"]["num_sequences"],
          "digest": dir_digest(out), "dir": out}


# Buckets of the profile, by (file suffix, function name): cumulative seconds of each.
PROFILE_BUCKETS = {
    "read sources (files, split hash, source hash)": [("prepare.py", "_documents")],
    "tokenize (encode)": [("byte.py", "encode")],
    "pack (Packer.add)": [("packing.py", "add")],
    "write shards (ShardWriter.write+close)": [("shards.py", "write"), ("shards.py", "close")],
    "  of which content sha256 (rows_digest)": [("shards.py", "rows_digest")],
    "validation dedupe (_dedupe_validation)": [("prepare.py", "_dedupe_validation")],
    "  of which per-row blake2b (_row_key)": [("prepare.py", "_row_key")],
    "  of which re-reading train+val shards": [("shards.py", "iter_blocks")],
}


def profile_prepare(data_cfg, tmp: str, top: int) -> dict:
  """cProfile of a 1-worker prepare: bucket totals and the top functions by own time."""
  prof = cProfile.Profile()
  start = time.perf_counter()
  prof.runcall(prepare, data_cfg, os.path.join(tmp, "profiled"), workers=1,
               records_per_shard=data_cfg.records_per_shard)
  wall = time.perf_counter() - start
  stats = pstats.Stats(prof).stats
  buckets = {}
  for bucket, keys in PROFILE_BUCKETS.items():
    total, calls = 0.0, 0
    for (fname, _, func), (_, ncalls, _, cumtime, _) in stats.items():
      if any(fname.endswith(suffix) and func == name for suffix, name in keys):
        total += cumtime
        calls += ncalls
    buckets[bucket] = {"seconds": total, "calls": calls}
  own = sorted(stats.items(), key=lambda kv: -kv[1][2])[:top]
  top_rows = [{"function": f"{os.path.basename(f)}:{line}({name})", "calls": nc,
               "own_s": tt, "cum_s": ct} for (f, line, name), (_, nc, tt, ct, _) in own]
  return {"profiled_wall_s": wall, "buckets": buckets, "top_own_time": top_rows}


# ---- main --------------------------------------------------------------------------------
def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--pipe_steps", type=int, default=1000, help="batches per tiny pipeline run")
  ap.add_argument("--big_steps", type=int, default=40, help="batches per large pipeline run")
  ap.add_argument("--big", default="256x512", help="larger batch x seq_len")
  ap.add_argument("--step_steps", type=int, default=150, help="train steps per timing")
  ap.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the loop check")
  ap.add_argument("--prefetch", type=int, default=2)
  ap.add_argument("--objectives", default="ar,mdm")
  ap.add_argument("--spm", default="train_sentencepiece?vocab_size=2048&model_type=bpe"
                  "&input_sentence_size=20000", help="tokenizer trained before timing spm")
  ap.add_argument("--skip_prepare", action="store_true")
  ap.add_argument("--json", default="", help="also write the results here")
  args = ap.parse_args()
  info = machine()
  print(f"machine: {info['cpu']}, {info['cores']} cores, jax {info['jax']}, "
        f"{info['devices']}, load average {info['loadavg_at_start']:.2f} at start", flush=True)
  results = {"machine": info, "args": vars(args)}
  base = tiny_config()
  big_b, big_l = map(int, args.big.split("x"))

  # 1. Pipeline over the prepared stdlib (prepared into the cache once, as a run would).
  start = time.perf_counter()
  tiny_cfg = with_steps(base, args.pipe_steps + args.step_steps + 10)
  tiny_data = ensure_prepared(tiny_cfg.data)
  big_cfg = with_steps(base, args.big_steps, big_b, big_l, unique=8_000_000)
  big_data = ensure_prepared(big_cfg.data)
  print(f"prepared data ready in {time.perf_counter() - start:.1f} s (cached after a first run)")
  pipe = []
  for label, cfg, data, steps in (
      (f"tiny {base.train.global_batch}x{base.data.seq_len}", tiny_cfg, tiny_data,
       args.pipe_steps),
      (f"big {big_b}x{big_l}", big_cfg, big_data, args.big_steps)):
    for read in ("memory", "records"):
      # memory: the split read once (the default up to data.in_memory_mb); records: every
      # batch read from the ArrayRecord shards, as for corpora larger than that.
      cfg_r = copy.deepcopy(cfg)
      cfg_r.data.in_memory_mb = cfg.data.in_memory_mb if read == "memory" else 0
      stream = experiment.make_stream(cfg_r, data)
      for workers in (0, 2):
        r = time_pipeline(stream, workers, steps, args.prefetch)
        r.update(setting=label, read=read, workers=workers, batches=steps)
        pipe.append(r)
  results["pipeline"] = pipe

  # 2. Train step of the tiny config, then the real loop against a constant batch.
  steps_out, loops = [], []
  for objective in args.objectives.split(","):
    exp = experiment.build_experiment(tiny_cfg, objective)
    step_tps = time_step(exp, args.step_steps)
    steps_out.append({"objective": objective, "tokens_per_s": step_tps})
    if objective == args.objectives.split(",")[0]:
      # Interleaved rounds, median of each feed: this shared machine drifts by 20%+ per minute.
      for _ in range(args.rounds):
        loops.append({"feed": "constant batch", "tokens_per_s": time_step(exp, args.step_steps)})
        for workers in (0, 2):
          loops.append({"feed": f"iterator workers={workers}", "tokens_per_s":
                        time_loop(exp, args.step_steps, workers, args.prefetch)})
  results["step"] = steps_out
  results["loop"] = loops

  print(f"\n== pipeline vs tiny train step (prefetch {args.prefetch}) ==")
  fastest_step = max(s["tokens_per_s"] for s in steps_out)
  print(f"{'setting':<16}{'read':>8}{'workers':>8}{'first batch s':>15}{'pipeline tok/s':>16}"
        f"{'/ fastest step':>16}")
  for r in pipe:
    r["ratio_to_fastest_step"] = r["tokens_per_s"] / fastest_step
    print(f"{r['setting']:<16}{r['read']:>8}{r['workers']:>8}{r['first_batch_s']:>15.3f}"
          f"{r['tokens_per_s']:>16,.0f}{r['ratio_to_fastest_step']:>15,.1f}x")
  for s in steps_out:
    print(f"step tokens/s, tiny {s['objective']}: {s['tokens_per_s']:,.0f}")
  worst = min(r["ratio_to_fastest_step"] for r in pipe)
  print(f"PIPELINE / STEP: slowest pipeline setting alone is {worst:,.1f}x the fastest tiny step"
        f" ({'faster than the step' if worst > 1 else 'THE PIPELINE IS THE BOTTLENECK'}; "
        f"the overlap check below says whether it hides behind it)")
  results["min_pipeline_over_step"] = worst
  print(f"\n== overlap: tiny {args.objectives.split(',')[0]} loop, {args.step_steps} steps, "
        f"{args.rounds} interleaved rounds ==")
  feeds = {}
  for x in loops:
    feeds.setdefault(x["feed"], []).append(x["tokens_per_s"])
  const = statistics.median(feeds["constant batch"])
  results["loop_median"] = {}
  for feed, values in feeds.items():
    med = statistics.median(values)
    results["loop_median"][feed] = {"tokens_per_s": med, "vs_constant": med / const}
    print(f"{feed:<22}{med:>10,.0f} tok/s (median of {len(values)}){med / const:>7.2f}x   "
          f"rounds: {', '.join(f'{v:,.0f}' for v in values)}")
  spread = (max(feeds["constant batch"]) - min(feeds["constant batch"])) / const
  print(f"constant-batch spread across rounds (noise): {spread:.0%}")
  hidden = {f: v["vs_constant"] for f, v in results["loop_median"].items() if "iterator" in f}
  for feed, ratio in hidden.items():
    if ratio >= 0.95:
      verdict = "hidden behind the step"
    elif ratio >= 1 - spread:
      verdict = f"{1 - ratio:.0%} slower, within this run's {spread:.0%} noise: not shown hidden"
    else:
      verdict = "NOT hidden: slows the step"
    print(f"{feed}: real loop at {ratio:.2f}x the constant-batch step -> {verdict}")

  # 3. Prepare throughput, determinism across workers, profile.
  if not args.skip_prepare:
    tmp = tempfile.mkdtemp(prefix="dlmscale-prepare-bench-")
    try:
      results["prepare"] = bench_prepare(base, args, tmp)
    finally:
      shutil.rmtree(tmp, ignore_errors=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1, default=str)
    print(f"\nwrote {args.json}")


def bench_prepare(base, args, tmp: str) -> dict:
  out = {"rows": []}
  start = time.perf_counter()
  trained_dir = os.path.join(tmp, "spm-trained")
  spm_cfg = copy.deepcopy(base.data)
  spm_cfg.tokenizer = args.spm
  prepare(spm_cfg, trained_dir, workers=1)
  out["spm_train_and_prepare_s"] = time.perf_counter() - start
  model = os.path.join(tmp, "tokenizer.model")
  shutil.copy(os.path.join(trained_dir, "tokenizer.model"), model)
  shutil.rmtree(trained_dir)
  byte32 = copy.deepcopy(base.data)
  byte512 = copy.deepcopy(base.data)
  byte512.seq_len = 512
  spm32 = copy.deepcopy(base.data)
  spm32.tokenizer = f"sentencepiece:{model}"
  for label, data_cfg in ((f"byte L={byte32.seq_len}", byte32), ("byte L=512", byte512),
                          (f"spm2048 L={spm32.seq_len}", spm32)):
    same = []
    for workers in (1, 2):
      r = time_prepare(data_cfg, workers, tmp, label.replace(" ", "_").replace("=", ""))
      same.append(r.pop("digest"))
      shutil.rmtree(r.pop("dir"))
      out["rows"].append(r)
    for r in out["rows"][-2:]:
      r["identical_across_workers"] = same[0] == same[1]
  out["profile"] = profile_prepare(byte32, tmp, top=12)

  print(f"\n== prepare: python stdlib, tiny data settings, {args.spm.split('&')[0]} trained "
        f"in {out['spm_train_and_prepare_s']:.1f} s (with its own prepare, not below) ==")
  print(f"{'setting':<16}{'workers':>8}{'MB text':>9}{'seconds':>9}{'MB/s':>8}{'rows':>9}"
        f"{'identical w1=w2':>17}")
  for r in out["rows"]:
    print(f"{r['setting']:<16}{r['workers']:>8}{r['mb']:>9.1f}{r['seconds']:>9.2f}"
          f"{r['mb_per_s']:>8.2f}{r['train_sequences']:>9,}"
          f"{str(r['identical_across_workers']):>17}")
  p = out["profile"]
  print(f"\n== cProfile: byte prepare L={byte32.seq_len}, 1 worker ({p['profiled_wall_s']:.1f} s "
        f"profiled wall; cProfile inflates per-call-heavy code) ==")
  for bucket, v in p["buckets"].items():
    print(f"{bucket:<48}{v['seconds']:>8.2f} s {v['seconds'] / p['profiled_wall_s']:>6.0%}"
          f"{v['calls']:>10,} calls")
  print("top functions by own time:")
  for row in p["top_own_time"]:
    print(f"  {row['function']:<60}{row['calls']:>10,}{row['own_s']:>8.2f} s own"
          f"{row['cum_s']:>8.2f} s cum")
  return out


if __name__ == "__main__":
  main()
