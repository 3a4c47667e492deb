"""Splash attention (dlmscale/models/splash.py), the Pallas TPU kernel run by Pallas's interpreter
on CPU: equals the einsum path's softmax(q k^T / sqrt(H)) v, values and gradients, causal and
bidirectional, with grouped kv heads, per-row key lengths and several key blocks; under shard_map
on meshes that split rows and heads (and on one whose heads do not split) a rematerialised, scanned
train step matches the einsum path on one device; 'auto' takes it only under a TPU mesh; compiled
for a TPU slice, the kernel lowers in place of the einsum path's L x S temporaries."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _shared import one_train_step, random_params, tiny_config
from dlmscale import compile as compile_lib
from dlmscale import parallel
from dlmscale.models import splash
from dlmscale.models.layers import attention_impl, attention_weights
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig

FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
RULES = parallel.DEFAULT_RULES


def einsum_attention(q, k, v, lengths, causal):
  probs_BxNxLxS = attention_weights(q, k, causal=causal, lengths_B=lengths)
  groups = q.shape[2] // k.shape[2]
  return jnp.einsum("bnls,bsnh->blnh", probs_BxNxLxS, jnp.repeat(v, groups, axis=2))


@pytest.mark.parametrize("causal,length", [(True, 384), (False, 384), (True, 24), (False, 24)])
def test_kernel_equals_einsum_values_and_gradients(causal, length):
  """384 = 3 key blocks of 128 (causal: the blocks above the diagonal are skipped); 24: one block
  of the whole sequence. Row 1's keys stop at 70 or 7, row 2's at the first key."""
  rng = np.random.default_rng(0)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((3, length, 4, 16), (3, length, 2, 16), (3, length, 2, 16)))
  lengths = jnp.asarray([length, 70 if length > 70 else 7, 1], jnp.int32)
  probe = jnp.asarray(rng.standard_normal((3, length, 4, 16)), jnp.float32)

  def loss(fn, q, k, v):
    out = fn(q, k, v, lengths, causal)
    return jnp.sum(out * probe), out

  kernel = lambda q, k, v, lengths, causal: splash.attention(q, k, v, lengths, causal=causal)
  got, want = (jax.jit(jax.value_and_grad(functools.partial(loss, fn), argnums=(0, 1, 2),
                                          has_aux=True))(q, k, v)
               for fn in (kernel, einsum_attention))
  (_, out), grads = got
  (_, want_out), want_grads = want
  # The lengths matter: row 1's queries see fewer keys than row 0's would.
  assert float(jnp.abs(out[1] - einsum_attention(q, k, v, None, causal)[1]).max()) > 1e-2
  np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
  for g, w in zip(grads, want_grads):
    assert float(jnp.abs(w).max()) > 0
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5 * float(jnp.abs(w).max()))


def test_rows_that_do_not_split_over_the_mesh_run_on_every_chip():
  """3 rows on data 4 (e.g. sampling a few rows): every chip attends them, heads still split over
  tensor 2; the output equals the einsum path."""
  rng = np.random.default_rng(5)
  q, k, v = (jnp.asarray(rng.standard_normal(s), jnp.float32)
             for s in ((3, 24, 4, 16), (3, 24, 2, 16), (3, 24, 2, 16)))
  lengths = jnp.asarray([24, 9, 3], jnp.int32)
  with parallel.activation_sharding(parallel.make_mesh(dict(data=4, tensor=2)), RULES):
    out = jax.jit(lambda q, k, v: splash.attention(q, k, v, lengths, causal=False))(q, k, v)
  np.testing.assert_allclose(out, einsum_attention(q, k, v, lengths, False), rtol=1e-5, atol=1e-5)


V, L, B = 64, 128, 8
MASK = V - 1


def make_cfg(**kw):
  return ModelConfig(**dict(dict(vocab_size=V, num_layers=2, d_model=32, num_heads=4,
                                 num_kv_heads=2, d_ff=64, dtype="float32"), **kw))


def _train_step(attention, mesh, objective, rules=RULES, **model_kw):
  tokens = np.random.default_rng(1).integers(0, MASK, (B, L))
  return one_train_step(build_model(make_cfg(attention=attention, **model_kw)), mesh, objective,
                        tokens, MASK, rules, FAST)


@pytest.mark.parametrize("objective,mesh_shape,kv_heads,rules", [
    ("ar", dict(data=4, tensor=2), 2, RULES),  # rows over data, heads over tensor
    ("mdm", dict(fsdp=2, data=2, tensor=2), 2, RULES),
    # One replicated kv head cannot split over tensor: every chip computes all 4 heads.
    ("mdm", dict(data=4, tensor=2), 1, tuple(dict(RULES, kv_heads=None).items())),
])
def test_sharded_train_step_matches_einsum_on_one_device(objective, mesh_shape, kv_heads, rules):
  kw = dict(num_kv_heads=kv_heads, remat="minimal", scan_layers=True)
  _, (ref_state, ref_metrics) = _train_step(
      "einsum", parallel.make_mesh({"data": -1}, jax.devices()[:1]), objective, **kw)
  lowered, (state, metrics) = _train_step("splash", parallel.make_mesh(mesh_shape), objective,
                                          rules, **kw)
  assert "shard_map" in lowered.as_text() or "sdy.manual_computation" in lowered.as_text()
  for key in ("loss", "grad_norm"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               state["params"], ref_state["params"])


def test_minimal_remat_keeps_the_kernels_output_and_logsumexp():
  """Under 'minimal' the backward pass reuses the kernel's saved output and logsumexp (named
  LSE_NAME by the kernel) instead of running the forward kernel again; gradients as no remat."""
  models = {r: build_model(make_cfg(num_layers=1, attention="splash", remat=r, scan_layers=False))
            for r in ("none", "minimal", "full")}
  params = random_params(models["none"], seed=2)
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, V, (2, L)), jnp.int32)
  shapes, grads = {}, {}
  one_chip = parallel.make_mesh({"data": -1}, jax.devices()[:1])
  for remat, m in models.items():
    with parallel.activation_sharding(one_chip, RULES):  # else 8 devices take the einsum path
      _, f_vjp = jax.vjp(lambda p: m.apply(p, tokens, causal=True)[0], params)
      grads[remat] = jax.jit(jax.grad(
          lambda p: jnp.sum(m.apply(p, tokens, causal=True)[0] ** 2)))(params)
    shapes[remat] = [tuple(x.shape) for x in jax.tree_util.tree_leaves(f_vjp)
                     if hasattr(x, "shape")]
  lse_BxNxL = (2, 4, L)
  assert lse_BxNxL in shapes["minimal"], shapes["minimal"]
  assert lse_BxNxL not in shapes["full"]  # the check can tell: 'full' keeps nothing of it
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               grads["minimal"], grads["none"])


def test_auto_takes_splash_only_under_a_tpu_mesh():
  cpu_mesh = parallel.make_mesh({"data": -1})
  assert attention_impl("auto", jnp.bfloat16, 64, 0.0, 256) == "chunked_on_cpu"
  with parallel.activation_sharding(cpu_mesh, RULES):
    assert splash.platform() == "cpu"
    assert attention_impl("auto", jnp.bfloat16, 64, 0.0, 256) == "chunked_on_cpu"
    assert attention_impl("splash", jnp.float32, 64, 0.0, 24) == "splash"
    assert attention_impl("splash", jnp.float32, 64, 0.1, 256) == "einsum"  # takes no dropout
  # Outside a mesh context (validation, scoring) a kernel on 8 devices cannot be partitioned.
  assert attention_impl("splash", jnp.float32, 64, 0.0, 256) == "einsum"
  assert splash.fits(2048) and splash.fits(128) and not splash.fits(100)


@pytest.mark.skipif(not compile_lib.libtpu_available(), reason="libtpu not installed")
def test_auto_compiles_splash_for_v5p_in_place_of_the_einsum_temporaries():
  def compiled(attention):
    cfg = tiny_config(**{"model.num_layers": 1, "model.scan_layers": False,
                         "model.attention": attention, "model.dtype": "bfloat16",
                         "model.d_model": 256, "model.num_heads": 4, "model.head_dim": 64,
                         "mesh.data": -1, "mesh.tensor": 2, "train.global_batch": 16,
                         "data.seq_len": 1024})
    return compile_lib.compile_for_topology(cfg, "ar", "v5p-8")

  auto, einsum = compiled("auto"), compiled("einsum")
  assert auto["attention_kernel"] and not einsum["attention_kernel"]
  # 4 heads x 1024 x 1024 fp32 scores per row and their probabilities: gone from the temporaries.
  saved = einsum["memory_per_chip"]["temporaries"] - auto["memory_per_chip"]["temporaries"]
  assert saved > 0.3 * einsum["memory_per_chip"]["temporaries"], (auto, einsum)
  # XLA's cost analysis does not see into the kernel: the rest of the step is still counted.
  assert 0.9 < einsum["compiler_over_analytic"] < 1.3
  assert 0.9 < auto["compiler_over_analytic_without_attention"] < 1.3
