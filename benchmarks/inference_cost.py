"""Inference cost of AR generation with a KV cache vs DLM generation by iterative unmasking.

  python benchmarks/inference_cost.py --preset=1b --time_preset=small_cpu --vocab_size=2048

Prints two Markdown tables for BENCHMARKS.md:
1. analytic forward FLOPs (dlmscale.evaluation.inference_cost) of generating 16 ... 4096 tokens
   with `--preset` (the paper's 1B by default), next to the paper's 16x ... 4700x;
2. measured wall time of dlmscale.sampling.ar_generate (KV cache) and dlm_generate (one token per
   step) for `--time_preset` with random weights on this machine, the time ratio next to the
   analytic FLOPs ratio of the same sizes.
Absolute times depend on the machine, which is printed with them.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # an installed libtpu would otherwise be probed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import dlmscale  # noqa: E402
from configs import models  # noqa: E402
from dlmscale.evaluation import inference_cost as ic  # noqa: E402
from dlmscale.sampling import ar_generate, dlm_generate  # noqa: E402

PAPER_RATIOS = {16: "16x", 4096: "4700x"}  # the end points the paper states


def model_config(preset: str, vocab_size: int) -> dlmscale.ModelConfig:
  sizes = dict(models.PRESETS[preset])
  sizes["vocab_size"] = vocab_size or sizes["vocab_size"]
  return dlmscale.ModelConfig(**sizes)


def analytic_table(cfg, gen_lens, prompt_lens) -> str:
  """Markdown: FLOPs at the first prompt length, the ratio at each prompt length."""
  tables = [ic.flops_ratio_table(cfg, gen_lens, prompt_len=p) for p in prompt_lens]
  head = ["tokens", f"AR + KV cache FLOPs (P={prompt_lens[0]})", "DLM FLOPs"]
  head += [f"DLM / AR (P={p})" for p in prompt_lens] + ["ratio / tokens", "paper"]
  lines = ["| " + " | ".join(head) + " |", "|" + "---:|" * len(head)]
  for i, row in enumerate(tables[0]):
    cells = [str(row.gen_len), f"{row.ar_flops:.3e}", f"{row.dlm_flops:.3e}"]
    cells += [f"{t[i].ratio:,.1f}x" for t in tables]
    cells += [f"{row.ratio / row.gen_len:.3f}", PAPER_RATIOS.get(row.gen_len, "")]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def best_seconds(fn, repeats: int, min_total_s: float) -> float:
  """Fastest of at least `repeats` timed calls lasting min_total_s in all, after one call that
  compiles (the minimum discards time lost to other jobs on a shared machine)."""
  jax.block_until_ready(fn())
  times = []
  while len(times) < repeats or sum(times) < min_total_s:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def timed_table(cfg, gen_lens, prompt_len: int, batch: int, repeats: int,
                min_total_s: float) -> str:
  """Markdown: measured AR (KV cache) and DLM generation times and their ratio vs FLOPs."""
  model = dlmscale.build_model(cfg)
  params = jax.jit(model.init)(jax.random.key(0))
  eod_id, mask_id = cfg.vocab_size - 2, cfg.vocab_size - 1
  prompt_BxP = np.random.default_rng(0).integers(0, eod_id, (batch, prompt_len), np.int32)
  key = jax.random.key(1)
  lines = ["| tokens | AR + KV cache ms | DLM ms | time DLM / AR | FLOPs DLM / AR "
           "| FLOPs as run |", "|---:|---:|---:|---:|---:|---:|"]
  for n in gen_lens:
    # eod is banned so no AR row stops early: every run generates all n tokens.
    ar_s = best_seconds(lambda: ar_generate(
        model, params, prompt_BxP, max_new_tokens=n, key=key, eod_id=eod_id,
        banned_ids=(eod_id, mask_id)).tokens, repeats, min_total_s)
    dlm_s = best_seconds(lambda: dlm_generate(
        model, params, prompt_BxP, gen_length=n, key=key, mask_id=mask_id,
        eod_id=eod_id).tokens, repeats, min_total_s)
    dlm = ic.dlm_generation_flops(cfg, prompt_len, n)
    # ar_generate's prefill and decode steps attend all P + n cache slots (masked ones too):
    # as run, AR computes one full square pass.
    ar_as_run = ic.forward_flops(cfg, prompt_len + n, (prompt_len + n) ** 2)
    lines.append(f"| {n} | {ar_s * 1e3:,.1f} | {dlm_s * 1e3:,.1f} | {dlm_s / ar_s:,.1f}x "
                 f"| {dlm / ic.ar_generation_flops(cfg, prompt_len, n):,.1f}x "
                 f"| {dlm / ar_as_run:,.1f}x |")
    print(lines[-1], file=sys.stderr, flush=True)  # progress
  return "\n".join(lines)


def ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x]


def main() -> None:
  ap = argparse.ArgumentParser()
  ap.add_argument("--preset", default="1b", choices=sorted(models.PRESETS))
  ap.add_argument("--gen_lens", default=",".join(map(str, ic.PAPER_GEN_LENS)))
  ap.add_argument("--prompt_lens", default="0,512", help="analytic ratio columns")
  ap.add_argument("--time_preset", default="small_cpu", choices=sorted(models.PRESETS))
  ap.add_argument("--vocab_size", type=int, default=2048, help="of the timed model (0: preset)")
  ap.add_argument("--time_gen_lens", default="16,32,64,128,256")
  ap.add_argument("--time_prompt_len", type=int, default=1,
                  help="AR needs one token to start from (a BOS)")
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--min_total_s", type=float, default=3.0,
                  help="short calls repeat until their timed runs last this long")
  args = ap.parse_args()
  cfg = model_config(args.preset, 0)
  print(f"## Analytic forward FLOPs: {args.preset} ({ic.position_flops(cfg) / 2:,.0f} matmul "
        f"params per token), DLM steps = tokens\n")
  print(analytic_table(cfg, ints(args.gen_lens), ints(args.prompt_lens)), flush=True)
  if not args.time_gen_lens:
    return
  timed = model_config(args.time_preset, args.vocab_size)
  print(f"\n## Measured: {args.time_preset}, vocabulary {timed.vocab_size}, "
        f"{timed.dtype.name}, batch {args.batch}, prompt {args.time_prompt_len} token(s), greedy, "
        f"fastest of >= {args.repeats} runs and >= {args.min_total_s:g} s")
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"jax {jax.__version__}, {jax.device_count()} x {jax.devices()[0].device_kind}\n")
  print(timed_table(timed, ints(args.time_gen_lens), args.time_prompt_len, args.batch,
                    args.repeats, args.min_total_s))


if __name__ == "__main__":
  main()
