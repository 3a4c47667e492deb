"""Analytic generation FLOPs: brute-force sums, exact AR cache relations, the paper's table,
MoE active-expert counting, bad input, and XLA's own count of compiled forward passes."""
import jax
import jax.numpy as jnp
import pytest

import dlmscale
from configs.models import PAPER_1B
from dlmscale.errors import ConfigError
from dlmscale.evaluation import inference_cost as ic

DENSE = dict(vocab_size=96, num_layers=3, d_model=32, num_heads=4, d_ff=80)
# Grouped KV heads and a head_dim that is not d_model / num_heads.
GQA = dict(DENSE, num_kv_heads=2, head_dim=12)


def _by_hand(kw):
  """(FLOPs per position, FLOPs per (query, key) pair) from the raw sizes of a dense config."""
  d, h, l = kw["d_model"], kw["num_heads"], kw["num_layers"]
  hd, kv = kw.get("head_dim") or d // h, kw.get("num_kv_heads") or h
  per_layer = 2 * (d * h * hd + 2 * d * kv * hd + h * hd * d + 3 * d * kw["d_ff"])
  return l * per_layer + 2 * d * kw["vocab_size"], l * h * 4 * hd


def _brute_force(kw, p, n, steps):
  """(AR with cache, AR without, DLM) FLOPs summed one position at a time."""
  position, pair = _by_hand(kw)
  prefill = sum(position + (q + 1) * pair for q in range(p))
  decode = sum(position + (p + i) * pair for i in range(1, n + 1))
  no_cache = sum(position + (q + 1) * pair for i in range(1, n + 1) for q in range(p + i))
  canvas = p + n
  dlm = sum(position + canvas * pair for _ in range(steps) for _ in range(canvas))
  return prefill + decode, no_cache, dlm


@pytest.mark.parametrize("kw", [DENSE, GQA])
@pytest.mark.parametrize("p,n,steps", [(0, 1, 1), (0, 7, 7), (5, 1, 1), (5, 9, 3), (13, 4, 8)])
def test_counts_equal_a_position_by_position_sum(kw, p, n, steps):
  cfg = dlmscale.ModelConfig(**kw)
  cached, uncached, dlm = _brute_force(kw, p, n, steps)
  assert ic.ar_generation_flops(cfg, p, n) == cached
  assert ic.ar_generation_flops(cfg, p, n, kv_cache=False) == uncached
  assert ic.dlm_generation_flops(cfg, p, n, steps) == dlm
  if steps == n:
    assert ic.dlm_generation_flops(cfg, p, n) == dlm  # default: one token per step


@pytest.mark.parametrize("p", [0, 1, 6])
def test_cache_saves_exactly_the_recomputed_prefixes(p):
  cfg = dlmscale.ModelConfig(**GQA)
  position, pair = _by_hand(GQA)
  ar = lambda n, cache=True: ic.ar_generation_flops(cfg, p, n, kv_cache=cache)  # noqa: E731
  assert ar(1) == ar(1, cache=False)  # one step: nothing to recompute
  for n in range(2, 12):
    # Without a cache, step n re-runs the n - 1 earlier steps' whole passes.
    assert ar(n, cache=False) - ar(n) == ar(n - 1, cache=False)
    # With it, step n adds one position attending p + n keys.
    assert ar(n) - ar(n - 1) == position + (p + n) * pair
    # Only the total length matters with a cache: the prompt is just the first positions.
    assert ar(n) == ic.ar_generation_flops(cfg, p + n - 1, 1)


def test_paper_1b_table_runs_from_16x_to_about_4700x():
  rows = ic.flops_ratio_table(dlmscale.ModelConfig(**PAPER_1B))
  assert [r.gen_len for r in rows] == [16, 32, 64, 128, 256, 512, 1024, 2048, 4096]
  assert rows[0].ratio == pytest.approx(16, rel=0.01)
  assert rows[-1].ratio == pytest.approx(4700, rel=0.01)
  for r in rows:
    assert r.ratio == r.dlm_flops / r.ar_flops
    # gen_len bidirectional passes vs one causal pass: between gen_len and 2 x gen_len.
    assert r.gen_len < r.ratio < 2 * r.gen_len
  ratios = [r.ratio for r in rows]
  per_token = [r.ratio / r.gen_len for r in rows]
  assert ratios == sorted(ratios) and per_token == sorted(per_token)  # attention grows


def test_prompt_and_fewer_steps_move_the_ratio_as_expected():
  cfg = dlmscale.ModelConfig(**PAPER_1B)
  base = ic.flops_ratio_table(cfg, (64, 256))
  prompted = ic.flops_ratio_table(cfg, (64, 256), prompt_len=512)
  halved = ic.flops_ratio_table(cfg, (64, 256), steps_per_token=0.5)
  for b, p, h in zip(base, prompted, halved):
    assert p.ratio > b.ratio  # longer canvas: more attention per pass, relative to AR
    assert h.dlm_flops * 2 == b.dlm_flops and h.ar_flops == b.ar_flops


def test_moe_counts_active_experts_and_the_router_only():
  dense = dlmscale.ModelConfig(**DENSE)
  moe_kw = dict(DENSE, experts_per_token=2, moe_d_ff=40)  # 2 x 40 = the dense d_ff
  router = 2 * DENSE["d_model"]  # per layer, position and expert
  p, n = 3, 5
  counts = [  # (count, positions it runs)
      (lambda c: ic.ar_generation_flops(c, p, n), p + n),
      (lambda c: ic.ar_generation_flops(c, p, n, kv_cache=False), n * p + n * (n + 1) // 2),
      (lambda c: ic.dlm_generation_flops(c, p, n), n * (p + n))]
  for experts in (2, 8, 32):  # idle experts add nothing: only the router grows with E
    moe = dlmscale.ModelConfig(**moe_kw, num_experts=experts)
    for count, positions in counts:
      assert count(moe) - count(dense) == positions * DENSE["num_layers"] * router * experts
  # Only layer 2 of 3 is MoE.
  every_third = dlmscale.ModelConfig(**moe_kw, num_experts=8, moe_every=3)
  assert ic.position_flops(every_third) == ic.position_flops(dense) + router * 8


@pytest.mark.parametrize("call,name", [
    (lambda c: ic.ar_generation_flops(c, 0, 0), "gen_len"),
    (lambda c: ic.dlm_generation_flops(c, 4, -3), "gen_len"),
    (lambda c: ic.ar_generation_flops(c, 0, 2.5), "gen_len"),
    (lambda c: ic.ar_generation_flops(c, -1, 8), "prompt_len"),
    (lambda c: ic.dlm_generation_flops(c, 0, 8, steps=0), "steps"),
    (lambda c: ic.flops_ratio_table(c, (16, 0)), "gen_len"),
    (lambda c: ic.flops_ratio_table(c, steps_per_token=0), "steps_per_token"),
])
def test_bad_lengths_are_config_errors_naming_the_argument(call, name):
  with pytest.raises(ConfigError, match=rf"^{name} must be"):
    call(dlmscale.ModelConfig(**DENSE))


def _xla_flops(fn, *args) -> float:
  analysis = jax.jit(fn).lower(*args).compile().cost_analysis()
  return (analysis[0] if isinstance(analysis, list) else analysis)["flops"]


@pytest.mark.parametrize("kw", [
    dict(vocab_size=512, num_layers=2, d_model=128, num_heads=4, d_ff=384),
    dict(vocab_size=256, num_layers=2, d_model=64, num_heads=4, d_ff=192, num_kv_heads=2)])
def test_forward_count_agrees_with_xla_cost_analysis(kw):
  """XLA counts every op (norms, softmax, RoPE too), so it sits a few percent above the count.
  Attention runs as all-heads einsums: XLA's count visits a loop body once, and the CPU default
  (the chunked path) loops over heads."""
  cfg = dlmscale.ModelConfig(**kw, dtype="float32", scan_layers=False, attention="einsum")
  model = dlmscale.build_model(cfg)
  params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), model.abstract_params)
  b, t = 2, 48
  full = _xla_flops(lambda p, x: model.apply(p, x, causal=False)[0],
                    params, jnp.zeros((b, t), jnp.int32))
  assert full == pytest.approx(b * ic.forward_flops(cfg, t, t * t), rel=0.06)
  assert full > b * ic.forward_flops(cfg, t, t * t)
  # A decode step attends all t slots of its cache (masked slots are computed too). Its layers
  # run in a loop, which XLA's count visits once: one layer makes the count whole.
  one = dlmscale.ModelConfig(**dict(kw, num_layers=1), dtype="float32", scan_layers=False,
                             attention="einsum")
  one_model = dlmscale.build_model(one)
  one_params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), one_model.abstract_params)
  decode = _xla_flops(lambda p, c, x: one_model.decode_step(p, c, x)[0],
                      one_params, one_model.init_cache(b, t), jnp.zeros((b,), jnp.int32))
  assert decode == pytest.approx(b * ic.forward_flops(one, 1, t), rel=0.06)
