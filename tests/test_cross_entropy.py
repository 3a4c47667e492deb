"""The chunked cross-entropy equals the plain one (loss, per-token CE, hits and every gradient), at
chunk sizes that do and do not divide the sequence, never builds a [B, L, V] array, and gives the
built-in objectives the same losses, metrics and gradients as full logits do."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmscale import objectives
from dlmscale.models.cross_entropy import (HeadInput, chunk_length, chunked_cross_entropy,
                                          cross_entropy)
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig
from _shared import random_params

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
jit = functools.partial(jax.jit, compiler_options=FAST)
B, L, D, V = 3, 10, 8, 37


def inputs(seed=0):
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.standard_normal((B, L, D)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((D, V)), jnp.float32)
  t = jnp.asarray(rng.integers(0, V, (B, L)), jnp.int32)
  weights = jnp.asarray(rng.uniform(0, 1, (B, L)) * (rng.uniform(0, 1, (B, L)) > 0.3),
                        jnp.float32)
  return x, w, t, weights


def _run(chunk):
  """loss, ce, hits and the gradients of 2.5 * loss w.r.t. x, w, weights (the factor checks the
  backward scales by its cotangent); chunk 0: the plain path through full logits."""
  def f(x, w, t, weights):
    def scaled(x, w, weights):
      if chunk:
        loss, ce, hit = chunked_cross_entropy(x, w, t, weights, chunk=chunk)
      else:
        loss, ce, hit = cross_entropy(HeadInput(x, w).logits(), t, weights)
      return 2.5 * loss, (loss, ce, hit)
    (_, aux), grads = jax.value_and_grad(scaled, argnums=(0, 1, 2), has_aux=True)(x, w, weights)
    return aux, grads
  return jit(f)


@pytest.mark.parametrize("chunk", [1, 3, 5, 10])
def test_chunked_equals_plain_loss_metrics_and_gradients(chunk):
  args = inputs()
  (loss, ce, hit), grads = _run(0)(*args)
  (c_loss, c_ce, c_hit), c_grads = _run(chunk)(*args)
  np.testing.assert_allclose(c_loss, loss, rtol=1e-6)
  np.testing.assert_allclose(c_ce, ce, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(c_hit, hit)
  for name, g, c_g in zip(("x", "w", "weights"), grads, c_grads):
    np.testing.assert_allclose(c_g, g, rtol=1e-5, atol=1e-6, err_msg=name)
  # d loss / d weight_i is ce_i: the weights' gradient is exact, not dropped.
  np.testing.assert_allclose(c_grads[2], 2.5 * ce, rtol=1e-6, atol=1e-6)


def test_plain_matches_a_float64_reference():
  x, w, t, weights = inputs(1)
  logits = np.einsum("bld,dv->blv", np.float64(x), np.float64(w))
  lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
  ce = lse - np.take_along_axis(logits, np.asarray(t)[..., None], -1)[..., 0]
  loss, got_ce, hit = cross_entropy(HeadInput(x, w), t, weights)
  np.testing.assert_allclose(got_ce, ce, rtol=1e-5)
  np.testing.assert_allclose(loss, (ce * np.float64(weights)).sum(), rtol=1e-5)
  np.testing.assert_array_equal(hit, logits.argmax(-1) == np.asarray(t))


def _jaxprs(value):
  """The jaxprs inside an equation parameter (scan bodies, cond branches, custom calls)."""
  if hasattr(value, "eqns"):
    return [value]
  if hasattr(value, "jaxpr") and hasattr(value.jaxpr, "eqns"):
    return [value.jaxpr]
  if isinstance(value, (tuple, list)):
    return [j for v in value for j in _jaxprs(v)]
  return []


def _largest_intermediate(fn, *args) -> int:
  """Elements of the largest array any equation of fn's jaxpr (sub-jaxprs included) produces."""
  def walk(jaxpr):
    biggest = 0
    for eqn in jaxpr.eqns:
      for var in eqn.outvars:
        biggest = max(biggest, int(np.prod(getattr(var.aval, "shape", ()))))
      for sub in (j for p in eqn.params.values() for j in _jaxprs(p)):
        biggest = max(biggest, walk(sub))
    return biggest
  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def test_no_full_logits_in_the_forward_or_backward():
  b, l, d, v = 2, 64, 8, 1000
  x = jnp.ones((b, l, d))
  w = jnp.ones((d, v))
  t = jnp.zeros((b, l), jnp.int32)
  weights = jnp.ones((b, l))
  chunk = chunk_length(b, l, v, elements=b * 16 * v)
  assert chunk == 16

  def loss(x, w):
    return chunked_cross_entropy(x, w, t, weights, chunk=chunk)[0]

  biggest = _largest_intermediate(jax.value_and_grad(loss, argnums=(0, 1)), x, w)
  assert biggest == b * chunk * v  # one chunk's logits, never b * l * v
  plain = _largest_intermediate(
      jax.value_and_grad(lambda x, w: cross_entropy(HeadInput(x, w).logits(), t, weights)[0],
                         argnums=(0, 1)), x, w)
  assert plain == b * l * v  # the check does see full logits where they exist


@pytest.fixture(scope="module")
def model():
  return build_model(ModelConfig(vocab_size=64, num_layers=1, d_model=32, num_heads=4, d_ff=64,
                                 dtype="float32", tie_embeddings=True))


@pytest.mark.parametrize("name", ["ar", "mdm"])
def test_objectives_equal_with_and_without_full_logits(model, name):
  params = random_params(model, seed=0)
  tokens = jnp.asarray(np.random.default_rng(3).integers(0, 63, (4, 16)), jnp.int32)
  cfg = objectives.resolve_args(name, {}, mask_id=63)

  def logits_forward(p, x, head=True, **kw):  # the network as a forward that ignores `head`
    del head
    return model.apply(p, x, **kw)

  def run(forward, p):
    fn = lambda q: objectives.get(name)(forward, q, {"tokens": tokens}, jax.random.key(5), cfg)
    return jax.value_and_grad(fn, has_aux=True)(p)

  (loss, metrics), grads = jit(functools.partial(run, model.apply))(params)
  (f_loss, f_metrics), f_grads = jit(functools.partial(run, logits_forward))(params)
  np.testing.assert_allclose(loss, f_loss, rtol=1e-6)
  for k in metrics:
    np.testing.assert_allclose(metrics[k], f_metrics[k], rtol=1e-6, atol=1e-7, err_msg=k)
  jax.tree.map(lambda g, h: np.testing.assert_allclose(g, h, rtol=1e-5, atol=1e-7), grads,
               f_grads)
