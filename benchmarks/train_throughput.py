"""Steady-state train-step tokens/s and MFU of dlmscale, side by side with a PyTorch peer.

  python benchmarks/train_throughput.py                        # reference shape: AR, DLM, peer
  python benchmarks/train_throughput.py --variants=dense/ar,moe/ar,moe_capacity/ar --peer=none
  python benchmarks/train_throughput.py --preset=tiny --seq_len=128 --batch=32 --peer=none

Variants are <model>[:key=value;...]/<objective>: model `dense` (the shape given by the flags),
`moe` (the same shape, every FFN an MoE of --experts experts of width d_ff / top_k, top-k routed,
dropless: a token's FLOPs equal the dense model's plus a router) or `moe_capacity` (the same,
capacity dispatch) or `moe_ragged` (dropless through XLA's own CPU lowering of ragged_dot, which
multiplies every token by every expert; the library's CPU path uses whole blocks per expert,
dlmscale/models/grouped_matmul.py); optional model-config overrides (e.g. dense:scan_layers=False;remat=dots/ar);
objective any registered one (ar, mdm, ar_dropout, ...), or ar_logits / mdm_logits: ar / mdm
through full [B, L, V] logits (the path before the chunked cross-entropy), for comparison.

The peak every MFU uses is measured in the same run on the same machine: XLA's own large matmul
(f32 on CPU, bf16 on GPU/TPU), median over the repeats; torch's matmul is printed beside it.
FLOPs per token come from dlmscale/flops.py (AR attention causal-halved, DLM bidirectional, MoE
active experts only). The peer is the same shape trained with Hugging Face transformers'
Qwen3ForCausalLM (random init, AdamW, clip 1.0, same batch and sequence), eager and under
torch.compile, in a separate process (its thread pool never shares a process with XLA's).
Everything is timed in interleaved rounds (every variant once per round, back to back) and
reported as medians. Huge pages for malloc, which the CLI turns on (dlmscale/host_memory.py), are
off here unless DLMSCALE_HUGEPAGES=on: interleaving variants every few steps makes some of them
pay a fresh-huge-page cost at every switch on this project's VMs (BENCHMARKS.md "Huge pages");
the peer's process inherits the setting either way. Needs the `bench` extra for the peer
(pip install -e .[bench]).
"""
from __future__ import annotations

import argparse
import ast
import json
import multiprocessing
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from dlmscale import host_memory  # noqa: E402

if __name__ == "__main__":
  host_memory.reexec_with_hugepages(default=False)  # the CLI's default is on: see above

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from configs import models  # noqa: E402
from dlmscale import config as config_lib  # noqa: E402
from dlmscale import experiment, flops, objectives, parallel, train  # noqa: E402
from dlmscale.models import grouped_matmul  # noqa: E402
from dlmscale.models.transformer import REMAT_POLICIES  # noqa: E402

def _full_logits(objective):
  """`objective` fed full fp32 logits (head=True), as before the chunked cross-entropy."""
  def fn(forward, params, batch, rng, cfg):
    return objective(lambda *a, head=True, **k: forward(*a, **k), params, batch, rng, cfg)
  return fn


# Baselines for the per-change table: the same objectives through [B, L, V] logits.
objectives.register("ar_logits")(_full_logits(objectives.ar))
objectives.register("mdm_logits", kind="dlm", **objectives.DEFAULT_ARGS["mdm"])(
    _full_logits(objectives.mdm))

# The reference shape: ~30M parameters, fp32, 16 x 256 tokens per step.
REFERENCE = dict(num_layers=8, d_model=512, num_heads=8, d_ff=1408, vocab_size=8192,
                 dtype="float32", tie_embeddings=True)
MATMUL_N = 2048


def model_overrides(args, kind: str) -> dict:
  base = dict(models.PRESETS[args.preset]) if args.preset else dict(REFERENCE)
  if not base.get("vocab_size"):
    base["vocab_size"] = args.vocab
  base.update(remat=args.remat)
  if kind == "dense":
    return base
  if kind not in ("moe", "moe_capacity", "moe_ragged"):
    raise SystemExit(f"unknown model kind {kind!r} in --variants: use dense, moe, moe_capacity "
                     "or moe_ragged")
  return dict(base, num_experts=args.experts, experts_per_token=args.top_k,
              moe_d_ff=base["d_ff"] // args.top_k, moe_every=1,
              moe_dispatch="capacity" if kind == "moe_capacity" else "dropless")


def build_variant(args, variant: str, devices):
  """(step_fn, state, tokens, flops_per_token) of one dlmscale variant, compiled and warmed up."""
  model, _, objective = variant.partition("/")
  kind, _, overrides = model.partition(":")
  objectives.get(objective)
  cfg = config_lib.default_config()
  cfg.objectives = (objective,)
  cfg.model.update(model_overrides(args, kind))
  for item in filter(None, overrides.split(";")):
    key, _, value = item.partition("=")
    cfg.model[key] = ast.literal_eval(value) if value[:1] not in "abcdefghijklmnopqrstuvwxyz" else value
  cfg.data.seq_len = args.seq_len
  cfg.train.update(global_batch=args.batch, warmup_steps=10)
  mesh = parallel.make_mesh(dict(cfg.mesh), devices)
  vocab = cfg.model.vocab_size
  step = experiment.build_step(cfg, objective, mesh, vocab_size=vocab, mask_id=vocab - 1,
                               num_steps=10**6)
  state = train.create_state(step.model, step.optimizer, 0, step.shardings)
  tokens = jax.random.randint(jax.random.key(1), (args.batch, args.seq_len), 0, vocab - 1)
  tokens = jax.device_put(tokens, step.batch_sharding)
  grouped_matmul.CPU_IMPL = "ragged_dot" if kind == "moe_ragged" else "blocked"  # read at trace
  try:
    for _ in range(2):  # compile, then one more so buffers are in their steady-state places
      state, metrics = step.step_fn(state, tokens)
    jax.block_until_ready(metrics)
  finally:
    grouped_matmul.CPU_IMPL = "blocked"
  causal = objectives.kind_of(objective) == "ar"
  fpt = flops.train_flops_per_token(step.model.cfg, args.seq_len, causal=causal)
  return {"step_fn": step.step_fn, "state": state, "tokens": tokens, "flops_per_token": fpt,
          "params": step.model.param_counts()}


def time_variant(v, steps: int) -> float:
  """Tokens/s over `steps` steps, dispatched back to back and waited for once."""
  state, tokens = v["state"], v["tokens"]
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = v["step_fn"](state, tokens)
  jax.block_until_ready((state, metrics))
  v["state"] = state
  return steps * tokens.size / (time.perf_counter() - start)


def time_steps(exp, steps: int) -> float:
  """Tokens/s of an experiment's compiled train step over `steps` steps on its stream's first
  batch (after one warm-up step); for benchmarks built on experiment.build_experiment."""
  state = train.create_state(exp.model, exp.optimizer, 0, exp.shardings)
  tokens = parallel.place_batch(exp.stream.local_batch_at(0), exp.batch_sharding)
  state, metrics = exp.step_fn(state, tokens)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = exp.step_fn(state, tokens)
  jax.block_until_ready(metrics)
  return steps * exp.stream.tokens_per_step / (time.perf_counter() - start)


def xla_matmul_flops(n: int = MATMUL_N, reps: int = 5) -> float:
  """Best FLOP/s of one n^3 matmul of XLA on the first device (f32 on CPU, else bf16)."""
  dtype = jnp.float32 if jax.devices()[0].platform == "cpu" else jnp.bfloat16
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  b = jax.random.normal(jax.random.key(1), (n, n), dtype)
  mm = jax.jit(lambda a, b: a @ b)
  mm(a, b).block_until_ready()
  best = float("inf")
  for _ in range(reps):
    start = time.perf_counter()
    mm(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n**3 / best


# ---- the PyTorch peer, in its own process -------------------------------------------------------

def _peer_worker(conn, shape: dict, batch: int, seq_len: int, modes: list[str]):
  """Serves ('run', mode, steps) -> tokens/s and ('matmul',) -> FLOP/s until ('stop',)."""
  try:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM
  except ImportError as e:
    conn.send(("error", f"the peer needs the bench extra ({e}): pip install -e .[bench]"))
    return
  torch.manual_seed(0)
  config = Qwen3Config(
      vocab_size=shape["vocab_size"], hidden_size=shape["d_model"],
      intermediate_size=shape["d_ff"], num_hidden_layers=shape["num_layers"],
      num_attention_heads=shape["num_heads"], num_key_value_heads=shape["num_heads"],
      head_dim=shape["d_model"] // shape["num_heads"], tie_word_embeddings=True,
      max_position_embeddings=seq_len, rms_norm_eps=1e-6, initializer_range=0.02,
      rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, use_cache=False)
  tokens = torch.randint(0, shape["vocab_size"], (batch, seq_len))
  runners = {}
  for mode in modes:
    model = Qwen3ForCausalLM(config).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1)
    fwd = torch.compile(model) if mode == "compile" else model

    def step(model=model, fwd=fwd, opt=opt):
      loss = fwd(input_ids=tokens, labels=tokens).loss
      loss.backward()
      torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
      opt.step()
      opt.zero_grad(set_to_none=True)
    for _ in range(2):  # compile (torch.compile) and warm up
      step()
    runners[mode] = step
  conn.send(("ready", sum(p.numel() for p in model.parameters())))
  while True:
    msg = conn.recv()
    if msg[0] == "stop":
      return
    if msg[0] == "matmul":
      a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
      a @ b
      best = float("inf")
      for _ in range(5):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
      conn.send(2 * MATMUL_N**3 / best)
    else:
      _, mode, steps = msg
      start = time.perf_counter()
      for _ in range(steps):
        runners[mode]()
      conn.send(steps * batch * seq_len / (time.perf_counter() - start))


class Peer:
  """The PyTorch peer's process; every call waits for its answer (nothing runs concurrently)."""

  def __init__(self, shape, batch, seq_len, modes):
    ctx = multiprocessing.get_context("spawn")
    self._conn, child = ctx.Pipe()
    self._proc = ctx.Process(target=_peer_worker, args=(child, shape, batch, seq_len, modes),
                             daemon=True)
    self._proc.start()
    status, detail = self._conn.recv()
    if status == "error":
      raise SystemExit(detail)
    self.params = detail

  def tokens_per_s(self, mode, steps):
    self._conn.send(("run", mode, steps))
    return self._conn.recv()

  def matmul_flops(self):
    self._conn.send(("matmul",))
    return self._conn.recv()

  def close(self):
    self._conn.send(("stop",))
    self._proc.join(timeout=30)


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--preset", default="", choices=[""] + sorted(models.PRESETS),
                  help="a configs/models.py preset instead of the reference shape")
  ap.add_argument("--vocab", type=int, default=8192, help="vocabulary of presets without one")
  ap.add_argument("--seq_len", type=int, default=256)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--steps", type=int, default=5, help="timed steps per variant per round")
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--variants", default="dense/ar,dense/mdm")
  ap.add_argument("--experts", type=int, default=8)
  ap.add_argument("--top_k", type=int, default=2)
  ap.add_argument("--remat", default="none", choices=sorted(REMAT_POLICIES))
  ap.add_argument("--peer", default="eager,compile",
                  help="comma list of eager, compile; 'none' to skip the PyTorch peer")
  ap.add_argument("--json", default="", help="write every round's figures here")
  args = ap.parse_args()

  devices = jax.devices()[:1]
  print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cpus, "
        f"jax {jax.__version__}, 1 x {devices[0].device_kind}; batch {args.batch} x "
        f"{args.seq_len}, shape {args.preset or REFERENCE}; GLIBC_TUNABLES="
        f"{os.environ.get('GLIBC_TUNABLES', '')!r} (dlmscale/host_memory.py)", flush=True)
  variants = {}
  for name in args.variants.split(","):
    start = time.perf_counter()
    variants[name] = build_variant(args, name, devices)
    print(f"built {name} in {time.perf_counter() - start:.0f} s "
          f"(params {variants[name]['params']})", flush=True)
  peer_modes = [] if args.peer == "none" else args.peer.split(",")
  peer = None
  if peer_modes:
    shape = model_overrides(args, "dense")
    start = time.perf_counter()
    peer = Peer(shape, args.batch, args.seq_len, peer_modes)
    print(f"peer ready in {time.perf_counter() - start:.0f} s ({peer.params:,} params)",
          flush=True)

  rounds = []
  for r in range(args.rounds):
    row = {"xla_matmul": xla_matmul_flops()}
    if peer:
      row["torch_matmul"] = peer.matmul_flops()
    for name, v in variants.items():
      row[name] = time_variant(v, args.steps)
    for mode in peer_modes:
      row[f"torch_{mode}"] = peer.tokens_per_s(mode, args.steps)
    rounds.append(row)
    print(f"round {r}: " + ", ".join(f"{k} {v:,.0f}" for k, v in row.items()), flush=True)
  if peer:
    peer.close()

  med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
  peak = med["xla_matmul"]
  print(f"\npeak (XLA {MATMUL_N}^3 matmul, median of {args.rounds} rounds): "
        f"{peak / 1e9:,.0f} GFLOP/s" + (f"; torch's: {med['torch_matmul'] / 1e9:,.0f} GFLOP/s"
                                       if peer else ""))
  ref = "torch_compile" if "torch_compile" in med else None
  print(f"{'variant':<22}{'tokens/s':>10}{'GFLOP/s':>9}{'MFU':>7}" + (f"{'vs compile':>12}"
                                                                      if ref else ""))
  dense = config_lib.model_config(_dense_cfg(args), args.vocab)
  ar_fpt = flops.train_flops_per_token(dense, args.seq_len, causal=True)  # the peer is AR
  for name in list(variants) + [f"torch_{m}" for m in peer_modes]:
    fpt = variants[name]["flops_per_token"] if name in variants else ar_fpt
    tps = med[name]
    line = f"{name:<22}{tps:>10,.0f}{tps * fpt / 1e9:>9.1f}{tps * fpt / peak:>7.1%}"
    if ref:
      line += f"{tps / med[ref]:>11.2f}x"
    print(line)
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"args": vars(args), "rounds": rounds, "median": med,
                 "flops_per_token": {n: v["flops_per_token"] for n, v in variants.items()}},
                f, indent=1)


def _dense_cfg(args):
  cfg = config_lib.default_config()
  cfg.model.update(model_overrides(args, "dense"))
  return cfg


if __name__ == "__main__":
  main()
