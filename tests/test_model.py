"""Model: causality, scan/unscan and remat equivalence, logical axes, parameter counts, grouped KV
heads, length masking and dropout. Small fp32 shapes; params are drawn with numpy (cheap, no
compile), jitted forwards are shared through module-scoped fixtures."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs.models import PAPER_1B, PAPER_1P7B_CODER
from dlmscale.errors import ConfigError
from dlmscale.models.layers import attention_weights, dropout
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig
from dlmscale.parallel import DEFAULT_RULES
from _shared import random_params

# Test-only codegen settings (LLVM -O0, legacy CPU fusion emitters): compiles ~5x faster on CPU
# than the defaults; equivalence tests compare programs built the same way.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
jit = functools.partial(jax.jit, compiler_options=FAST)
V, L, B = 64, 16, 2
BASE = dict(vocab_size=V, num_layers=2, d_model=32, num_heads=4, d_ff=64, dtype="float32")


def make_cfg(**kw):
  return ModelConfig(**dict(BASE, **kw))


def unstack(params, n):
  """Scanned params (leading layer axis under 'blocks') -> per-layer dict {0: ..., 1: ...}."""
  out = dict(params)
  out["blocks"] = {i: jax.tree.map(lambda x, i=i: x[i], params["blocks"]) for i in range(n)}
  return out


def stack(params, n):
  out = dict(params)
  out["blocks"] = jax.tree.map(lambda *xs: jnp.stack(xs), *[params["blocks"][i] for i in range(n)])
  return out


def tokens_for(seed, shape=(B, L)):
  return jnp.asarray(np.random.default_rng(seed).integers(0, V, shape), jnp.int32)


def max_abs(x):
  return float(jnp.max(jnp.abs(x)))


@pytest.fixture(scope="module")
def model():
  return build_model(make_cfg())


@pytest.fixture(scope="module")
def params(model):
  return random_params(model, seed=0)


@pytest.fixture(scope="module")
def fwd(model):
  """{causal: jitted (params, tokens) -> logits}."""
  return {c: jit(lambda p, t, c=c: model.apply(p, t, causal=c)[0]) for c in (True, False)}


# ---- causality ----------------------------------------------------------------------------
@pytest.mark.parametrize("causal", [True, False])
def test_causal_and_bidirectional_dependence(model, params, fwd, causal):
  base = tokens_for(1, (L,))
  positions = [0, 3, 8, L - 1]
  rows = [base] + [base.at[j].set((base[j] + 1 + j) % V) for j in positions]
  logits = np.asarray(fwd[causal](params, jnp.stack(rows)))
  assert logits.shape == (len(rows), L, V) and logits.dtype == np.float32
  for r, j in enumerate(positions, start=1):
    diff_L = np.abs(logits[r] - logits[0]).max(-1)
    # Changing token j always changes its own position and (through attention) every later one.
    assert diff_L[j:].min() > 1e-3, (j, diff_L)
    if causal:
      np.testing.assert_allclose(logits[r, :j], logits[0, :j], atol=1e-6, rtol=0)
    elif j > 0:
      assert diff_L[:j].min() > 1e-3, (j, diff_L)  # bidirectional: earlier positions see it too


# ---- scan / unscan / remat ----------------------------------------------------------------
def test_scan_equals_unrolled_layers(model, params, fwd):
  n = model.cfg.num_layers
  unrolled = build_model(make_cfg(scan_layers=False))
  p_unrolled = unstack(params, n)
  assert (jax.tree.map(lambda x: x.shape, p_unrolled)
          == jax.tree.map(lambda x: x.shape, unrolled.abstract_params))
  # Round trip is exact.
  jax.tree.map(np.testing.assert_array_equal, stack(p_unrolled, n), params)
  tokens = tokens_for(2)
  got = jit(lambda p, t: unrolled.apply(p, t, causal=False)[0])(p_unrolled, tokens)
  want = fwd[False](params, tokens)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  assert max_abs(want) > 0.1  # a meaningful comparison, not two zero tensors


REMAT_DROPOUT = {"attention": 0.1, "residual": 0.1, "mlp": 0.1}


def _value_and_grad(model, tokens, weights):
  """Dropout is on (fixed key): rematerialised layers must redraw the very same masks."""
  def loss(p):
    logits = model.apply(p, tokens, causal=True, dropout_rates=REMAT_DROPOUT,
                         dropout_key=jax.random.key(5))[0]
    return jnp.sum(logits * weights), logits
  return jit(jax.value_and_grad(loss, has_aux=True))


@pytest.fixture(scope="module")
def remat_reference():
  """One layer (remat acts per layer; XLA unrolls short scans, so layers cost compile time)."""
  m = build_model(make_cfg(num_layers=1))
  params = random_params(m, seed=10)
  tokens = tokens_for(3)
  weights = jnp.asarray(np.random.default_rng(4).standard_normal((B, L, V)), jnp.float32)
  (_, logits), grads = _value_and_grad(m, tokens, weights)(params)
  return params, tokens, weights, logits, grads


@pytest.mark.parametrize("remat,scan", [("full", True), ("dots", True), ("full", False),
                                        ("minimal", True), ("minimal", False)])
def test_remat_policies_match_no_remat(remat_reference, remat, scan):
  params, tokens, weights, want_logits, want_grads = remat_reference
  m = build_model(make_cfg(num_layers=1, remat=remat, scan_layers=scan))
  p = params if scan else unstack(params, 1)
  (_, logits), grads = _value_and_grad(m, tokens, weights)(p)
  if not scan:
    grads = stack(grads, 1)
  np.testing.assert_allclose(logits, want_logits, rtol=1e-5, atol=1e-5)
  flat_got = jax.tree_util.tree_leaves_with_path(grads)
  flat_want = jax.tree_util.tree_leaves(want_grads)
  assert len(flat_got) == len(flat_want)
  for (path, g), w in zip(flat_got, flat_want):
    assert max_abs(w) > 0, path  # every param receives gradient
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * max_abs(w), err_msg=str(path))


def _residual_shapes(remat, scan, attention):
  """Shapes of the arrays a causal forward pass keeps for its backward pass (the leaves of the
  VJP closure)."""
  m = build_model(make_cfg(num_layers=1, remat=remat, scan_layers=scan, attention=attention))
  _, f_vjp = jax.vjp(lambda p: m.apply(p, tokens_for(3), causal=True)[0], random_params(m, 1))
  return [tuple(x.shape) for x in jax.tree_util.tree_leaves(f_vjp) if hasattr(x, "shape")]


@pytest.mark.parametrize("scan", [True, False])
@pytest.mark.parametrize("attention", ["chunked", "einsum"])
def test_minimal_remat_keeps_attention_output_not_its_scores(scan, attention):
  """'dots' keeps attention's L x S scores (batched dots); 'minimal' keeps its output (and the
  chunked path's logsumexp) instead, so no residual has L x S entries."""
  def l_by_s(shapes):
    return [s for s in shapes if s.count(L) >= 2]  # nothing else has two axes of size L

  assert l_by_s(_residual_shapes("dots", scan, attention))  # the check can see scores
  minimal = _residual_shapes("minimal", scan, attention)
  assert not l_by_s(minimal), minimal
  heads, head_dim = make_cfg().num_heads, make_cfg().d_model // make_cfg().num_heads
  out_BxLxNxH = (B, L, heads, head_dim)
  assert any(s[-4:] == out_BxLxNxH for s in minimal), minimal  # attention's output is kept


# ---- logical axes and parameter counts ----------------------------------------------------
@pytest.mark.parametrize("scan", [True, False])
def test_every_param_has_logical_axes(scan):
  m = build_model(make_cfg(scan_layers=scan, tie_embeddings=False))
  axes_leaves = jax.tree_util.tree_leaves(m.logical_axes, is_leaf=lambda x: isinstance(x, tuple))
  shape_leaves = jax.tree_util.tree_leaves_with_path(m.abstract_params)
  assert (jax.tree.structure(m.abstract_params)
          == jax.tree.structure(m.logical_axes, is_leaf=lambda x: isinstance(x, tuple)))
  assert len(shape_leaves) == len(axes_leaves) >= 13
  rules = dict(DEFAULT_RULES)
  for (path, leaf), axes in zip(shape_leaves, axes_leaves):
    top = path[0].key
    assert len(axes) == leaf.ndim, (path, axes, leaf.shape)
    assert all(a in rules for a in axes), (path, axes)  # every name has a sharding rule
    if scan and top == "blocks":
      assert axes[0] == "layers" and leaf.shape[0] == m.cfg.num_layers, (path, axes)
      assert "layers" not in axes[1:]
    else:
      assert "layers" not in axes, (path, axes)
  assert m.logical_axes["embed"] == ("vocab", "embed")
  assert m.logical_axes["head"] == ("embed", "vocab")


def _hand_count(num_layers, d, heads, ff, vocab, tied, qk_norm=True):
  head_dim = d // heads
  per_layer = 4 * d * d + 3 * d * ff + 2 * d + (2 * head_dim if qk_norm else 0)
  embedding = vocab * d * (1 if tied else 2)
  return num_layers * per_layer + d + embedding, num_layers * per_layer + d


@pytest.mark.parametrize("preset", [PAPER_1B, PAPER_1P7B_CODER], ids=["1b", "1.7b_coder"])
def test_param_counts_match_hand_formula(preset):
  m = build_model(ModelConfig(**preset))  # shapes only: nothing of size 1B is allocated
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(m.abstract_params))
  total, non_embedding = _hand_count(preset["num_layers"], preset["d_model"], preset["num_heads"],
                                     preset["d_ff"], preset["vocab_size"],
                                     preset["tie_embeddings"])
  assert m.param_counts() == {"total": total, "non_embedding": non_embedding}
  if preset is PAPER_1B:
    assert m.cfg.qk_norm and m.cfg.tie_embeddings and m.cfg.head_dim == 128
    assert total == 1_086_134_272 and abs(total / 1e9 - 1.09) < 0.005  # the paper's ~1.09B


# ---- grouped KV heads ---------------------------------------------------------------------
def test_grouped_kv_heads_equal_mha_with_repeated_kv(params, fwd):
  gqa = build_model(make_cfg(num_kv_heads=2))
  assert gqa.abstract_params["blocks"]["attn"]["wk"].shape == (2, 32, 2, 8)
  p_gqa = random_params(gqa, seed=5)
  # MHA whose k/v heads are copies: q head n uses kv head n // (num_heads / num_kv_heads).
  p_mha = jax.tree.map(lambda x: x, p_gqa)
  for name in ("wk", "wv"):
    p_mha["blocks"]["attn"][name] = jnp.repeat(p_gqa["blocks"]["attn"][name], 2, axis=2)
  tokens = tokens_for(6)
  for causal in (True, False):
    got = jit(lambda p, t, c=causal: gqa.apply(p, t, causal=c)[0])(p_gqa, tokens)
    np.testing.assert_allclose(got, fwd[causal](p_mha, tokens), rtol=1e-5, atol=1e-5)
  # num_kv_heads == num_heads is plain MHA: same config as the default (0 -> num_heads).
  assert make_cfg(num_kv_heads=4) == make_cfg()


def test_attention_weights_against_naive_reference():
  rng = np.random.default_rng(7)
  b, l, n, kh, h = 2, 5, 4, 2, 8
  q = rng.standard_normal((b, l, n, h)).astype(np.float32)
  k = rng.standard_normal((b, l, kh, h)).astype(np.float32)
  lengths = np.array([3, 5])
  for causal in (True, False):
    got = np.asarray(attention_weights(jnp.asarray(q), jnp.asarray(k), causal=causal,
                                       lengths_B=jnp.asarray(lengths)))
    want = np.zeros((b, n, l, l), np.float32)
    for bi in range(b):
      for ni in range(n):
        for i in range(l):
          allowed = [s for s in range(l) if s < lengths[bi] and (not causal or s <= i)]
          scores = np.array([q[bi, i, ni] @ k[bi, s, ni // (n // kh)] / math.sqrt(h)
                             for s in allowed])
          want[bi, ni, i, allowed] = np.exp(scores - scores.max()) / np.exp(
              scores - scores.max()).sum()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


# ---- variable length ----------------------------------------------------------------------
def test_lengths_mask_keys_beyond_length(model, params, fwd):
  f = jit(lambda p, t, n: model.apply(p, t, causal=False, lengths_B=n)[0])
  base = tokens_for(8, (L,))
  changed = base.at[10:].set((base[10:] + 7) % V)
  tokens = jnp.stack([base, changed, base, changed])
  logits = np.asarray(f(params, tokens, jnp.array([10, 10, L, L], jnp.int32)))
  # Length 10: the first 10 positions never see tokens 10..15.
  np.testing.assert_allclose(logits[1, :10], logits[0, :10], atol=1e-6, rtol=0)
  # Full length: the same change reaches every position (the mask is what blocked it above).
  assert np.abs(logits[3, :10] - logits[2, :10]).max(-1).min() > 1e-3
  # Full length given explicitly equals no lengths at all.
  # (batches of 4 and 2 rows: fp32 matmul blocking may differ in the last bits)
  np.testing.assert_allclose(logits[2:], fwd[False](params, tokens[2:]), rtol=1e-5, atol=1e-5)


# ---- dropout ------------------------------------------------------------------------------
def test_dropout_function_statistics():
  x = jnp.ones((200_000,), jnp.float32)
  y = np.asarray(dropout(x, 0.3, jax.random.key(0)))
  kept = y != 0
  assert abs(kept.mean() - 0.7) < 0.005
  np.testing.assert_allclose(y[kept], 1 / 0.7, rtol=1e-6)
  assert dropout(x, 0.0, jax.random.key(0)) is x and dropout(x, 0.5, None) is x


def test_model_dropout(model, params, fwd):
  tokens = tokens_for(9)
  clean = np.asarray(fwd[False](params, tokens))
  sites = ("attention", "residual", "mlp")

  @jit
  def run(p, t, k):
    apply = functools.partial(model.apply, p, t, causal=False)
    return {"all": apply(dropout_rates={s: 0.3 for s in sites}, dropout_key=k)[0],
            "zero_rates": apply(dropout_rates={s: 0.0 for s in sites}, dropout_key=k)[0],
            "no_key": apply(dropout_rates={"mlp": 0.5})[0],
            **{s: apply(dropout_rates={s: 0.5}, dropout_key=k)[0] for s in sites}}

  k1, k2 = jax.random.key(1), jax.random.key(2)
  a, a_again, b = (jax.device_get(run(params, tokens, k)) for k in (k1, k1, k2))
  np.testing.assert_array_equal(a["all"], a_again["all"])  # a pure function of the key
  assert np.abs(a["all"] - clean).mean() > 1e-2
  assert np.abs(a["all"] - b["all"]).mean() > 1e-2  # depends on the key
  # Rates 0 with a key, or rates > 0 without one: identical to no dropout.
  np.testing.assert_allclose(a["zero_rates"], clean, rtol=1e-6, atol=1e-6)
  np.testing.assert_allclose(a["no_key"], clean, rtol=1e-6, atol=1e-6)
  for site in sites:  # each site on its own is wired in
    assert np.abs(a[site] - clean).mean() > 1e-3, site
    assert np.abs(a[site] - b[site]).mean() > 1e-3, site
  # A misspelt site is an error, not a run without dropout.
  with pytest.raises(ConfigError, match="attn"):
    model.apply(params, tokens, causal=True, dropout_rates={"attn": 0.5}, dropout_key=k1)
