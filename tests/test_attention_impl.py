"""The attention implementations compute the same network: jax.nn.dot_product_attention ('xla',
the path cuDNN flash attention takes on GPU) and the per-head 'chunked' path with its
flash-style backward pass equal the explicit einsum path, causal and bidirectional, with grouped
KV heads and per-row key lengths (values and gradients); the choice per backend."""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmscale.errors import ConfigError
from dlmscale.models import chunked_attention
from dlmscale.models.layers import attention_impl, attention_weights
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig
from _shared import random_params

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
CFG = ModelConfig(vocab_size=40, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2, d_ff=48,
                  dtype="float32", scan_layers=True)


@pytest.mark.parametrize("impl", ["xla", "chunked"])
@pytest.mark.parametrize("causal", [True, False])
def test_attention_impl_equals_einsum_path(causal, impl):
  models = {i: build_model(dataclasses.replace(CFG, attention=i)) for i in ("einsum", impl)}
  params = random_params(models["einsum"], seed=1)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 40, (3, 12)), jnp.int32)
  lengths = None if causal else jnp.asarray([12, 7, 1], jnp.int32)

  probe = jnp.asarray(np.random.default_rng(1).standard_normal((3, 12, 40)), jnp.float32)

  def loss_and_grad(model, p):
    def f(q):
      logits, _ = model.apply(q, tokens, causal=causal, lengths_B=lengths)
      return jnp.sum(logits * probe), logits
    return jax.value_and_grad(f, has_aux=True)(p)

  out = {impl: jax.jit(functools.partial(loss_and_grad, m), compiler_options=FAST)(params)
         for impl, m in models.items()}
  (_, logits), grads = out["einsum"]
  (_, x_logits), x_grads = out[impl]
  if lengths is not None:  # keys past a row's length are masked, so those rows' queries differ
    assert float(jnp.abs(logits[2] - logits[0]).max()) > 1e-3
  np.testing.assert_allclose(x_logits, logits, rtol=1e-5, atol=1e-5)
  # fp32 sums in another order: equal to ~1e-6 of each gradient's scale.
  jax.tree.map(lambda a, b: np.testing.assert_allclose(
      a, b, rtol=1e-4, atol=1e-5 * float(jnp.abs(b).max())), x_grads, grads)


def test_choice_per_backend_and_errors():
  # CPU (this test machine): chunked where lowered for CPU, einsum elsewhere; both take dropout.
  assert attention_impl("auto", jnp.float32, 64, 0.0, 256) == "chunked_on_cpu"
  assert attention_impl("auto", jnp.float32, 64, 0.1, 256) == "chunked_on_cpu"
  assert attention_impl("chunked", jnp.float32, 64, 0.1, 256) == "chunked"
  assert attention_impl("xla", jnp.float32, 64, 0.1, 256) == "einsum"  # dropout needs the probs
  assert attention_impl("xla", jnp.float32, 64, 0.0, 256) == "xla"
  with pytest.raises(ConfigError, match="model.attention"):
    dataclasses.replace(CFG, attention="flash")


@pytest.mark.parametrize("length", [10, 128])  # 128 causal: 4 query blocks, keys skipped
@pytest.mark.parametrize("causal", [True, False])
@pytest.mark.parametrize("rate", [0.0, 0.3])
def test_chunked_custom_vjp_equals_autodiff_of_its_forward(causal, rate, length):
  """The flash-style backward (probabilities recomputed from the logsumexp, dropout masks drawn
  again) equals autodiff through the same forward pass, with grouped heads and key lengths; the
  forward equals the einsum path's softmax(q k^T) v."""
  rng = np.random.default_rng(3)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((3, length, 4, 8), (3, length, 2, 8), (3, length, 2, 8)))
  lengths = jnp.asarray([length, 6, 1], jnp.int32)
  probe = jnp.asarray(rng.standard_normal((3, length, 4, 8)), jnp.float32)
  key = jax.random.key(7)
  drop = (rate, jax.random.key_impl(key)) if rate else None
  key_data = jax.random.key_data(key) if rate else None

  def custom(q, k, v):
    out = chunked_attention.attention(q, k, v, lengths, causal=causal, dropout_rate=rate, key=key)
    return jnp.sum(out * probe)

  def autodiff(q, k, v):
    out, _ = chunked_attention._forward(q, k, v, lengths, key_data, causal, drop)
    return jnp.sum(out * probe)

  if not rate:
    probs = attention_weights(q, k, causal=causal, lengths_B=lengths)  # [B, N, L, S]
    want_out = jnp.einsum("bnls,bsnh->blnh", probs, jnp.repeat(v, 2, axis=2))
    np.testing.assert_allclose(chunked_attention.attention(q, k, v, lengths, causal=causal),
                               want_out, rtol=1e-5, atol=1e-5)
  got = jax.jit(jax.value_and_grad(custom, argnums=(0, 1, 2)))(q, k, v)
  want = jax.jit(jax.value_and_grad(autodiff, argnums=(0, 1, 2)))(q, k, v)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-6)
  for g, w in zip(got[1], want[1]):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  if rate:  # the masks matter: without them the output differs
    plain = chunked_attention.attention(q, k, v, lengths, causal=causal)
    dropped = chunked_attention.attention(q, k, v, lengths, causal=causal, dropout_rate=rate,
                                          key=key)
    assert float(jnp.abs(plain - dropped).max()) > 1e-2


def test_chunked_dropout_is_unbiased():
  """E[dropout output] = the output without dropout: mean over 400 keys within 4 sigma."""
  rng = np.random.default_rng(4)
  q, k, v = (jnp.asarray(rng.standard_normal((1, 6, 2, 4)), jnp.float32) for _ in range(3))
  plain = chunked_attention.attention(q, k, v, causal=False)
  draws = jax.jit(jax.vmap(lambda key: chunked_attention.attention(
      q, k, v, causal=False, dropout_rate=0.5, key=key)))(jax.random.split(jax.random.key(0), 400))
  mean, sem = draws.mean(0), draws.std(0) / np.sqrt(400)
  assert float(jnp.max(jnp.abs(mean - plain) / sem)) < 4.5


def test_auto_lowers_chunked_for_cpu_and_einsum_for_tpu():
  """Outside a TPU mesh (test_splash.py: under one 'auto' takes splash), 'auto' decides at
  lowering: a program traced on a CPU host and lowered for TPU carries the einsum attention, not
  the CPU's per-head loop."""
  model = build_model(CFG)
  params = random_params(model, seed=1)
  tokens = jnp.zeros((2, 12), jnp.int32)
  loss = lambda p: jnp.sum(model.apply(p, tokens, causal=True)[0])
  traced = jax.jit(jax.grad(loss)).trace(params)
  # The chunked path is a loop over the kv heads (a while op); the layers are scanned too, so
  # count loops: one more per attention in the CPU program.
  cpu = traced.lower(lowering_platforms=("cpu",)).as_text().count("stablehlo.while")
  tpu = traced.lower(lowering_platforms=("tpu",)).as_text().count("stablehlo.while")
  assert cpu > tpu
