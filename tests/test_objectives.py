"""Objectives: exact losses of an uninformative model, equivalences at rate 0, which positions the
masked-diffusion loss reads, the exact expectation of its estimators on a tiny case, and the
registry. Masking-structure tests use a fake forward (logits from a params array) that records
what the objective fed it; the numeric tests use the real network."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate

from dlmscale import objectives
from dlmscale.errors import ConfigError
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig
from _shared import random_params

# Test-only codegen settings (LLVM -O0, legacy CPU fusion emitters): compiles ~5x faster on CPU
# than the defaults; every check here is about numbers, not codegen.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
jit = functools.partial(jax.jit, compiler_options=FAST)
V, L = 64, 16
MASK = V - 1  # tokens are drawn from [0, MASK), so a mask id in the input is always a masked slot
LOG_V = math.log(V)


def tokens_for(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).integers(0, MASK, shape), jnp.int32)


def args(name, **overrides):
  return objectives.resolve_args(name, overrides, mask_id=MASK)


@pytest.fixture(scope="module")
def model():
  return build_model(ModelConfig(vocab_size=V, num_layers=1, d_model=32, num_heads=4, d_ff=64,
                                 dtype="float32", tie_embeddings=False))


@pytest.fixture(scope="module")
def params(model):
  return random_params(model, seed=0)


@pytest.fixture(scope="module")
def zero_head_params(params):
  return dict(params, head=jnp.zeros_like(params["head"]))


class Recorder:
  """A fake forward for eager use: logits come from params['logits'] (independent of the input);
  every call's inputs and keyword arguments are recorded."""

  def __init__(self):
    self.calls = []

  def __call__(self, params, tokens_BxL, **kw):
    self.calls.append(dict(kw, tokens=tokens_BxL))
    return params["logits"], {"aux_loss": jnp.zeros((), jnp.float32)}


def fake_run(name, cfg):
  """A jitted (params {'logits'}, tokens, rng) -> dict with loss, metrics, the gradient w.r.t. the
  logits, and what the objective fed the fake forward (inputs, lengths); the static keyword
  arguments of that call land in the returned `static` dict at trace time."""
  static = {}

  def run(p, tokens, rng):
    def loss_fn(q):
      seen = {}

      def fwd(params, x, **kw):
        seen.update(inputs=x, lengths=kw.get("lengths_B"))
        static.update((k, kw.get(k)) for k in ("causal", "dropout_rates"))
        static["has_dropout_key"] = kw.get("dropout_key") is not None
        return params["logits"], {"aux_loss": jnp.zeros((), jnp.float32)}

      loss, metrics = objectives.get(name)(fwd, q, {"tokens": tokens}, rng, cfg)
      return loss, (metrics, seen)

    (loss, (metrics, seen)), g = jax.value_and_grad(loss_fn, has_aux=True)(p)
    return dict(seen, loss=loss, metrics=metrics, grad=g["logits"])

  return jit(run), static


def fake_logits(seed, b, l):
  return {"logits": jnp.asarray(np.random.default_rng(seed).standard_normal((b, l, V)) * 2,
                                jnp.float32)}


def ce_np(logits_BxLxV, tokens_BxL):
  x = np.asarray(logits_BxLxV, np.float64)
  lse = np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1)) + x.max(-1)
  return lse - np.take_along_axis(x, np.asarray(tokens_BxL)[..., None], -1)[..., 0]


# ---- an uninformative model: every prediction is uniform ----------------------------------
def test_zero_head_losses_equal_log_vocab(model, zero_head_params):
  small, big = tokens_for(1, (4, L)), tokens_for(2, (128, L))
  rngs = jax.random.split(jax.random.key(0), 32)
  apply = model.apply

  def mdm_loss(p, tok, rng, **kw):
    return objectives.mdm(apply, p, {"tokens": tok}, rng, args("mdm", **kw))[0]

  def losses(p, rng):
    return {"ar": objectives.ar(apply, p, {"tokens": small}, rng, args("ar"))[0],
            "frac": mdm_loss(p, small, rng, weighting="inv_masked_fraction"),
            "frac_cut": mdm_loss(p, small, rng, weighting="inv_masked_fraction",
                                 random_length_prob=1.0),
            "inv_t": mdm_loss(p, big, rng, weighting="inv_t")}

  out = jit(jax.vmap(losses, in_axes=(None, 0)))(zero_head_params, rngs)
  # AR and the authors' 1/(masked fraction) weighting (also on cut lengths): exactly log V for
  # every sample (small batches: fp32 sums of many equal terms drift by ~1e-5 at -O0).
  for key in ("ar", "frac", "frac_cut"):
    np.testing.assert_allclose(out[key], LOG_V, rtol=0, atol=1e-5, err_msg=key)
  # 1/t weighting: (number masked) * log V / (t L) is log V only in expectation over the masks.
  # Its spread across the 32 independent batches gives the standard error of their mean.
  inv_t = np.asarray(out["inv_t"], np.float64)
  stderr = inv_t.std(ddof=1) / math.sqrt(len(inv_t))
  assert 0 < stderr < 0.015 * LOG_V  # 4 stderr < 6% of log V: a biased weighting shows up
  assert abs(inv_t.mean() - LOG_V) < 4 * stderr, (inv_t.mean(), stderr)


# ---- rate-0 variants are plain AR ---------------------------------------------------------
def test_ar_variants_at_rate_zero_equal_ar(model, params):
  tokens = tokens_for(2, (4, L))
  rng = jax.random.key(3)
  variants = {"ar": args("ar"), "ar_input_mask": args("ar_input_mask", rate=0.0),
              "ar_dropout": args("ar_dropout", rate=0.0),
              "ar_input_mask_0.5": args("ar_input_mask", rate=0.5),
              "ar_dropout_0.5": args("ar_dropout", rate=0.5)}

  def all_grads(p):
    out = {}
    for key, cfg in variants.items():
      fn = objectives.get(key.split("_0.")[0])
      loss_fn = functools.partial(lambda q, fn, cfg: fn(model.apply, q, {"tokens": tokens}, rng,
                                                        cfg)[0], fn=fn, cfg=cfg)
      with_grad = key in ("ar", "ar_input_mask")
      out[key] = jax.value_and_grad(loss_fn)(p) if with_grad else (loss_fn(p), None)
    return out

  out = jit(all_grads)(params)
  loss_ar, grads_ar = out["ar"]
  assert abs(float(loss_ar) - LOG_V) > 1e-3  # a trained-looking (non-uniform) model
  np.testing.assert_allclose(out["ar_dropout"][0], loss_ar, rtol=1e-6)
  loss, grads = out["ar_input_mask"]
  np.testing.assert_allclose(loss, loss_ar, rtol=1e-6)
  jax.tree.map(lambda g, w: np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-8),
               grads, grads_ar)
  for key in ("ar_input_mask_0.5", "ar_dropout_0.5"):  # and the noise does act at rate > 0
    assert abs(float(out[key][0]) - float(loss_ar)) > 1e-3, key


def test_ar_variants_feed_the_network_as_documented():
  b = 8
  p = fake_logits(0, b, L)
  tokens = tokens_for(4, (b, L))
  run, static = fake_run("ar_input_mask", args("ar_input_mask", rate=0.5))
  out = run(p, tokens, jax.random.key(0))
  inputs = np.asarray(out["inputs"])
  masked = inputs == MASK
  assert static["causal"] is True and 0.3 < masked.mean() < 0.7
  np.testing.assert_array_equal(inputs[~masked], np.asarray(tokens)[~masked])
  assert float(out["metrics"]["input_mask_fraction"]) == pytest.approx(masked.mean())
  # Targets stay clean and shifted: loss is the mean CE of logits[:, i] against tokens[:, i + 1].
  want = ce_np(p["logits"][:, :-1], tokens[:, 1:]).mean()
  assert float(out["loss"]) == pytest.approx(want, rel=1e-5)
  assert np.all(np.asarray(out["grad"])[:, -1] == 0)  # the last logit predicts nothing
  run, static = fake_run("ar_dropout", args("ar_dropout", rate=0.2, sites=["mlp"]))
  run(p, tokens, jax.random.key(1))
  assert static == {"causal": True, "dropout_rates": {"mlp": 0.2}, "has_dropout_key": True}


# ---- masked diffusion: which positions count ----------------------------------------------
def test_mdm_reads_only_masked_positions():
  b = 8
  p = fake_logits(1, b, L)
  tokens = tokens_for(5, (b, L))
  rng = jax.random.key(7)
  run, static = fake_run("mdm", args("mdm"))
  out = run(p, tokens, rng)
  assert static["causal"] is False and out["lengths"] is None
  inputs = np.asarray(out["inputs"])
  masked = inputs == MASK
  assert 0 < masked.sum() < masked.size
  np.testing.assert_array_equal(inputs[~masked], np.asarray(tokens)[~masked])
  grad, loss = np.asarray(out["grad"]), float(out["loss"])
  # Unmasked positions contribute nothing: zero gradient, and changing their logits or their
  # targets leaves the loss unchanged (the mask depends only on the rng).
  assert np.all(grad[~masked] == 0)
  assert np.all(np.abs(grad[masked]).max(-1) > 0)
  noise = jnp.asarray(np.random.default_rng(0).standard_normal((b, L, V)) * 5, jnp.float32)
  p_noisy = {"logits": jnp.where(jnp.asarray(masked)[..., None], p["logits"], p["logits"] + noise)}
  other = jnp.where(jnp.asarray(masked), tokens, (tokens + 1) % MASK)
  assert float(run(p_noisy, tokens, rng)["loss"]) == pytest.approx(loss, rel=1e-6)
  out_other = run(p, other, rng)
  assert float(out_other["loss"]) == pytest.approx(loss, rel=1e-6)
  np.testing.assert_array_equal(np.asarray(out_other["inputs"]) == MASK, masked)
  # ... while a change at a masked position does change it.
  assert abs(float(run({"logits": p["logits"] + noise}, tokens, rng)["loss"]) - loss) > 1e-3
  # No shift: the target of a masked position is the clean token at that same position.
  rows, cols = np.nonzero(masked)
  np.testing.assert_array_equal(grad[rows, cols].argmin(-1), np.asarray(tokens)[rows, cols])


def test_mdm_forces_one_masked_token_per_row(monkeypatch):
  b = 256
  p = fake_logits(2, b, L)
  tokens = tokens_for(6, (b, L))
  rng = jax.random.key(11)

  def run(weighting):
    out = fake_run("mdm", args("mdm", weighting=weighting))[0](p, tokens, rng)
    masked = np.asarray(out["inputs"]) == MASK
    return float(out["loss"]), masked

  # Natural t ~ U(0, 1): a row stays unmasked with probability 1/(L+1), ~15 of 256 rows.
  _, m_inv_t = run("inv_t")
  n_inv_t = m_inv_t.sum(-1)
  assert (n_inv_t == 0).sum() >= 3
  _, m_forced = run("inv_masked_fraction")
  n_forced = m_forced.sum(-1)
  assert n_forced.min() >= 1
  np.testing.assert_array_equal(m_forced[n_inv_t > 0], m_inv_t[n_inv_t > 0])  # same masks else
  assert np.all(n_forced[n_inv_t == 0] == 1)

  # Tiny t for every row: 1/t weighting sees no masked token, the authors' variant exactly one.
  monkeypatch.setattr(objectives, "sample_mask_times",
                      lambda rng, batch_size, eps, antithetic: jnp.full((batch_size,), 1e-7))
  loss_inv_t, m_inv_t = run("inv_t")
  assert loss_inv_t == 0.0 and not m_inv_t.any()
  loss, masked = run("inv_masked_fraction")
  assert np.all(masked.sum(-1) == 1)
  assert len(set(np.nonzero(masked)[1])) > L // 2  # the forced position is random, not fixed
  # Each row's loss is the CE of its single masked token.
  want = ce_np(p["logits"], tokens)[masked].mean()
  assert loss == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("weighting", ["inv_t", "inv_masked_fraction"])
def test_mdm_random_length_masks_only_valid_positions(weighting, monkeypatch):
  b = 16
  p = fake_logits(3, b, L)
  tokens = tokens_for(7, (b, L))
  ce = ce_np(p["logits"], tokens)
  # Known per-row t, so the 1/t estimator has an exact value: sum_masked CE / (t * length).
  t_B = np.linspace(0.15, 0.95, b)
  monkeypatch.setattr(objectives, "sample_mask_times",
                      lambda rng, batch_size, eps, antithetic: jnp.asarray(t_B, jnp.float32))
  run, _ = fake_run("mdm", args("mdm", weighting=weighting, random_length_prob=1.0))
  lengths_seen = set()
  for seed in range(12):
    out = run(p, tokens, jax.random.key(seed))
    lengths = np.asarray(out["lengths"])
    assert lengths.shape == (b,) and np.all(lengths == lengths[0]) and 1 <= lengths[0] <= L
    n = int(lengths[0])
    lengths_seen.add(n)
    masked = np.asarray(out["inputs"]) == MASK
    assert not masked[:, n:].any()  # padding beyond the length is never masked
    assert np.all(np.asarray(out["grad"])[:, n:] == 0)
    assert np.isfinite(float(out["loss"])) and np.isfinite(float(out["metrics"]["masked_ce"]))
    masked_ce_B = (ce * masked).sum(-1)
    if weighting == "inv_masked_fraction":
      assert masked.sum(-1).min() >= 1
      want = (masked_ce_B / masked.sum(-1)).mean()
    else:
      want = (masked_ce_B / (t_B * n)).mean()
    assert float(out["loss"]) == pytest.approx(want, rel=1e-5)
  assert len(lengths_seen) >= 4 and min(lengths_seen) < L  # lengths really vary


def test_mdm_unknown_weighting_is_config_error():
  p = fake_logits(4, 2, L)
  with pytest.raises(ConfigError, match="inv_t"):
    fake_run("mdm", args("mdm", weighting="bogus"))[0](p, tokens_for(8, (2, L)), jax.random.key(0))


# ---- the exact expectation of the estimators on a tiny case -------------------------------
def test_mdm_estimators_match_exact_expectation_over_all_masks():
  """L = 3, V = 8: enumerate the 2^3 mask patterns m, compute S(m) = sum of the masked CE with the
  network run on the masked input, and integrate over t ~ U(eps, 1) with P(m | t) =
  t^|m| (1 - t)^(L - |m|). The Monte Carlo mean of the objective must match:
    inv_t:               E_t sum_m P(m|t) S(m) / (t L)
    inv_masked_fraction: E_t [sum_{m != {}} P(m|t) S(m) / |m| + (1 - t)^L mean_i S({i})]
  (an empty draw gets one uniformly chosen masked position)."""
  v, l, mask_id = 8, 3, 7
  tiny = build_model(ModelConfig(vocab_size=v, num_layers=1, d_model=16, num_heads=2, d_ff=32,
                                 dtype="float32"))
  p = random_params(tiny, seed=3, std=0.6)  # large weights: S(m) really depends on the pattern
  seq = jnp.array([1, 4, 2], jnp.int32)
  patterns = np.array([[(m >> i) & 1 for i in range(l)] for m in range(2 ** l)], bool)
  inputs = jnp.where(jnp.asarray(patterns), mask_id, seq[None])
  logits = jit(lambda q, x: tiny.apply(q, x, causal=False)[0])(p, inputs)
  ce = ce_np(logits, np.broadcast_to(np.asarray(seq), patterns.shape))
  s = (ce * patterns).sum(-1)
  k = patterns.sum(-1)
  eps = objectives.DEFAULT_ARGS["mdm"]["eps"]

  def expect(f):
    return integrate.quad(f, eps, 1.0, epsabs=1e-12, epsrel=1e-10)[0] / (1 - eps)

  exact_inv_t = expect(lambda t: sum(t ** (k[m] - 1) * (1 - t) ** (l - k[m]) * s[m] / l
                                     for m in range(1, 2 ** l)))
  singles = [s[1 << i] for i in range(l)]
  exact_frac = expect(lambda t: sum(t ** k[m] * (1 - t) ** (l - k[m]) * s[m] / k[m]
                                    for m in range(1, 2 ** l)) + (1 - t) ** l * np.mean(singles))
  # The two expectations differ and the CE varies strongly with the pattern, so each check bites.
  assert abs(exact_inv_t - exact_frac) > 0.05 and np.ptp(ce[patterns]) > 1.0

  b, n_rng = 2048, 48
  batch = {"tokens": jnp.broadcast_to(seq, (b, l))}

  def both(rng):
    return [objectives.mdm(tiny.apply, p, batch, rng,
                           objectives.resolve_args("mdm", {"weighting": w}, mask_id))[0]
            for w in ("inv_t", "inv_masked_fraction")]

  est = jit(jax.vmap(both))(jax.random.split(jax.random.key(0), n_rng))
  for values, exact in zip(est, (exact_inv_t, exact_frac)):
    values = np.asarray(values, np.float64)
    stderr = values.std(ddof=1) / math.sqrt(n_rng)
    assert 4 * stderr < 0.3 * abs(exact_inv_t - exact_frac)  # the estimators are told apart
    assert abs(values.mean() - exact) < 4 * stderr + 1e-4, (values.mean(), exact, stderr)


# ---- registry -----------------------------------------------------------------------------
@pytest.fixture
def custom_objective():
  name = "test_constant_objective"

  @objectives.register(name, kind="dlm", scale=2.0, sites=("a",))
  def constant(forward, params, batch, rng, cfg):
    logits, aux = forward(params, batch["tokens"], causal=False)
    return cfg["scale"] * logits.mean() + aux["aux_loss"], {"scale": cfg["scale"]}

  yield name, constant
  for table in (objectives._REGISTRY, objectives.DEFAULT_ARGS, objectives.KINDS):
    table.pop(name, None)


def test_register_custom_objective(custom_objective):
  name, fn = custom_objective
  assert name in objectives.names() and objectives.names() == sorted(objectives.names())
  assert objectives.get(name) is fn and objectives.kind_of(name) == "dlm"
  cfg = objectives.resolve_args(name, {"sites": ["a", "b"]}, mask_id=5)
  assert cfg == {"scale": 2.0, "sites": ("a", "b"), "mask_id": 5}
  p = {"logits": jnp.full((1, 4, V), 3.0)}
  loss, metrics = objectives.get(name)(Recorder(), p, {"tokens": jnp.zeros((1, 4), jnp.int32)},
                                       jax.random.key(0), cfg)
  assert float(loss) == 6.0 and metrics["scale"] == 2.0
  with pytest.raises(ValueError, match="kind"):
    objectives.register("test_bad_kind", kind="gan")
  assert "test_bad_kind" not in objectives.names()


def test_registry_errors():
  assert {"ar", "ar_input_mask", "ar_dropout", "mdm"} <= set(objectives.names())
  assert objectives.kind_of("ar") == "ar" and objectives.kind_of("mdm") == "dlm"
  with pytest.raises(ConfigError) as err:
    objectives.get("nope")
  assert "nope" in str(err.value)
  assert all(n in str(err.value) for n in objectives.names())
  with pytest.raises(ConfigError, match="nope"):
    objectives.kind_of("nope")
  with pytest.raises(ConfigError, match="bogus"):
    objectives.resolve_args("mdm", {"bogus": 1}, mask_id=0)
  with pytest.raises(ConfigError, match="nope"):
    objectives.resolve_args("nope", {}, mask_id=0)
  assert objectives.resolve_args("mdm", None, mask_id=9) == dict(
      objectives.DEFAULT_ARGS["mdm"], mask_id=9)
