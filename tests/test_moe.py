"""MoE feed-forward: one expert equals the dense SwiGLU; dropless and capacity dispatch agree when
nothing is dropped and count drops exactly otherwise; balancing and z losses follow their formulas;
an MoE train step under data x expert and fsdp x expert meshes matches one device; bad settings
are one-line ConfigErrors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from dlmscale import config, objectives, optim, parallel, train
from dlmscale.errors import ConfigError
from dlmscale.models import moe as moe_lib
from dlmscale.models.layers import SwiGLU
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig

V, L, B, D = 64, 16, 8, 32
MASK = V - 1
RULES = parallel.DEFAULT_RULES
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def make_cfg(**kw):
  return ModelConfig(**dict(dict(vocab_size=V, num_layers=1, d_model=D, num_heads=4, d_ff=64,
                                 dtype="float32", num_experts=4, experts_per_token=2,
                                 moe_d_ff=32), **kw))


def make_moe(seed=0, router_scale=1.0, **kw):
  """An MoE layer whose router is scaled up (a 0.02-std router is almost uniform)."""
  layer = moe_lib.MoE(make_cfg(**kw), jax.random.key(seed))
  layer.router[...] = layer.router[...] * router_scale
  return layer


def inputs(seed=1, b=B, l=L):
  # The offset gives the router a preferred direction, so expert loads are uneven.
  return jax.random.normal(jax.random.key(seed), (b, l, D), jnp.float32) + 0.5


def test_one_expert_top1_equals_dense_swiglu():
  cfg = make_cfg(num_experts=1, experts_per_token=1, moe_d_ff=64)
  layer = moe_lib.MoE(cfg, jax.random.key(0))
  dense = SwiGLU(cfg, jax.random.key(1))
  for name in ("w_gate", "w_up", "w_down"):
    getattr(dense, name)[...] = getattr(layer, name)[...][0]
  x = inputs()
  y, aux = layer(x)
  np.testing.assert_allclose(y, dense(x), rtol=1e-5, atol=1e-6)
  assert float(aux["drop_fraction"]) == 0.0
  assert float(aux["load_balance_loss"]) == pytest.approx(1.0)


@pytest.mark.parametrize("router,renorm,shared", [("softmax", False, 0), ("softmax", True, 1),
                                                  ("sigmoid", True, 0)])
def test_dropless_and_capacity_agree_without_drops(router, renorm, shared):
  kw = dict(router=router, renormalize_topk=renorm, num_shared_experts=shared, router_scale=30.0)
  # capacity_factor E / k gives every expert room for all L tokens of a group: nothing drops.
  dropless = make_moe(moe_dispatch="dropless", **kw)
  capacity = make_moe(moe_dispatch="capacity", capacity_factor=2.0, **kw)
  x = inputs()
  y_a, aux_a = dropless(x)
  y_b, aux_b = capacity(x)
  load = np.asarray(aux_a["expert_load"])
  assert load.max() > 0.3 and load.min() < 0.2  # the router really is uneven
  np.testing.assert_allclose(y_a, y_b, rtol=1e-5, atol=1e-6)
  for name in aux_a:
    np.testing.assert_allclose(aux_a[name], aux_b[name], rtol=1e-6, err_msg=name)
  assert float(aux_b["drop_fraction"]) == 0.0


def test_small_capacity_drop_fraction_is_a_direct_count():
  layer = make_moe(moe_dispatch="capacity", capacity_factor=0.5, router_scale=30.0)
  x = inputs()
  _, _, _, experts_TxK = layer.route(x.reshape(-1, D))
  experts_BxLxK = np.asarray(experts_TxK).reshape(B, L, 2)
  c = moe_lib.capacity(0.5, L, 2, 4)
  assert c == 4
  dropped = 0
  for row in experts_BxLxK:  # one group per sequence: an expert keeps at most c assignments
    counts = np.bincount(row.reshape(-1), minlength=4)
    dropped += np.maximum(counts - c, 0).sum()
  expected = dropped / experts_BxLxK.size
  assert expected > 0.2
  y, aux = layer(x)
  assert float(aux["drop_fraction"]) == pytest.approx(expected, abs=1e-6)
  assert np.isfinite(np.asarray(y)).all()
  # A tiny factor still leaves one slot per expert and group: at most 4 of a row's 32 kept.
  _, aux1 = make_moe(moe_dispatch="capacity", capacity_factor=1e-6)(x)
  assert 1 - 4 / 32 <= float(aux1["drop_fraction"]) < 1


def test_load_balance_loss_minimal_for_uniform_router_and_grows_with_imbalance():
  t, e, k = 256, 8, 2
  noise_TxE = jax.random.normal(jax.random.key(0), (t, e))
  balances = []
  for bias in (0.0, 1.0, 2.0, 4.0):
    logits = noise_TxE + bias * jnp.arange(e)[None, :] / e
    scores = jax.nn.softmax(logits, -1)
    experts = jax.lax.top_k(scores, k)[1]
    balances.append(float(moe_lib.router_aux(logits, scores, experts, "softmax")[0]))
  assert all(a < b for a, b in zip(balances, balances[1:])), balances
  assert balances[0] == pytest.approx(1.0, abs=0.1) and balances[-1] > 1.5
  # Uniform probabilities: exactly 1 whichever experts were picked (top_k breaks ties to 0..k-1).
  zeros = jnp.zeros((t, e))
  uniform = jax.nn.softmax(zeros, -1)
  experts = jax.lax.top_k(uniform, k)[1]
  balance, z, load = moe_lib.router_aux(zeros, uniform, experts, "softmax")
  assert float(balance) == pytest.approx(1.0)
  assert float(z) == pytest.approx(np.log(e) ** 2)
  np.testing.assert_allclose(load, [0.5, 0.5] + [0.0] * 6)


def test_z_loss_and_aux_loss_formulas():
  layer = make_moe(router_scale=10.0, load_balance_coef=0.1, router_z_coef=0.01)
  x = inputs()
  _, aux = layer(x)
  logits = np.asarray(x.reshape(-1, D), np.float64) @ np.asarray(layer.router[...], np.float64)
  m = logits.max(-1, keepdims=True)
  lse = (m + np.log(np.exp(logits - m).sum(-1, keepdims=True)))[:, 0]
  assert float(aux["z_loss"]) == pytest.approx(np.mean(lse ** 2), rel=1e-5)
  assert float(aux["aux_loss"]) == pytest.approx(
      0.1 * float(aux["load_balance_loss"]) + 0.01 * float(aux["z_loss"]), rel=1e-6)


def test_interleaved_layers_and_metrics_reach_the_objective():
  cfg = make_cfg(num_layers=2, moe_every=2, scan_layers=False)
  model = build_model(cfg)
  blocks = model.abstract_params["blocks"]
  assert "w_gate" in blocks[0]["mlp"] and blocks[0]["mlp"]["w_gate"].shape == (D, 64)  # dense
  assert blocks[1]["mlp"]["w_gate"].shape == (4, D, 32)  # MoE
  assert model.logical_axes["blocks"][1]["mlp"]["w_down"] == ("expert", "mlp", "embed")
  params = model.init(jax.random.key(0))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, MASK, (2, L)), jnp.int32)
  loss_fn = train.make_loss_fn(model, objectives.get("ar"),
                               objectives.resolve_args("ar", None, mask_id=MASK))
  loss, metrics = jax.jit(loss_fn).lower(params, tokens, jax.random.key(0)).compile(FAST)(
      params, tokens, jax.random.key(0))
  for name in ("moe_load_balance_loss", "moe_z_loss", "moe_drop_fraction", "moe_load/3"):
    assert np.ndim(metrics[name]) == 0, name
  assert float(loss) == pytest.approx(float(metrics["nll"] + metrics["aux_loss"]), rel=1e-6)
  assert float(metrics["aux_loss"]) > 0
  assert sum(float(metrics[f"moe_load/{e}"]) for e in range(4)) == pytest.approx(1.0)


def test_scanned_rematted_layers_equal_unscanned():
  """Two scanned MoE layers (aux stacked by the scan) equal the same two layers in a loop."""
  scanned = build_model(make_cfg(num_layers=2, remat="full", moe_dispatch="capacity"))
  looped = build_model(make_cfg(num_layers=2, scan_layers=False, moe_dispatch="capacity"))
  params = scanned.init(jax.random.key(0))
  unstacked = dict(params, blocks={i: jax.tree.map(lambda a, i=i: a[i], params["blocks"])
                                   for i in range(2)})
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, MASK, (2, L)), jnp.int32)
  def run(model, p):
    return jax.jit(lambda p: model.apply(p, tokens, causal=False)).lower(p).compile(FAST)(p)

  out_s, out_l = run(scanned, params), run(looped, unstacked)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out_s, out_l)
  assert set(out_s[1]) == {"aux_loss", "load_balance_loss", "z_loss", "drop_fraction",
                           "expert_load"}


def test_scanned_periods_equal_unscanned_interleaved_layers():
  """moe_every=2 scanned as 2 periods of (dense, MoE) equals the same 4 layers in a loop."""
  scanned = build_model(make_cfg(num_layers=4, moe_every=2))
  looped = build_model(make_cfg(num_layers=4, moe_every=2, scan_layers=False))
  period = scanned.abstract_params["blocks"]["layers"]
  assert period[0]["mlp"]["w_gate"].shape == (2, D, 64)  # (periods, embed, mlp): dense
  assert period[1]["mlp"]["w_gate"].shape == (2, 4, D, 32)  # (periods, expert, embed, mlp)
  assert scanned.logical_axes["blocks"]["layers"][1]["mlp"]["w_gate"] == (
      "layers", "expert", "embed", "mlp")
  params = scanned.init(jax.random.key(0))
  unstacked = dict(params, blocks={
      i: jax.tree.map(lambda a, i=i: a[i // 2], params["blocks"]["layers"][i % 2])
      for i in range(4)})
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, MASK, (2, L)), jnp.int32)

  def run(model, p):
    f = jax.jit(lambda p: model.apply(p, tokens, causal=True))
    return f.lower(p).compile(FAST)(p)

  out_s, out_l = run(scanned, params), run(looped, unstacked)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), out_s, out_l)
  assert float(out_s[1]["aux_loss"]) > 0


# ---- sharded train step -------------------------------------------------------------------
MESHES = {"data2_expert4": dict(data=2, expert=4), "fsdp2_expert4": dict(fsdp=2, expert=4)}


@functools.cache
def mesh_for(name):
  if name == "one":
    return parallel.make_mesh({"data": -1}, devices=jax.devices()[:1])
  return parallel.make_mesh(MESHES[name])


@functools.cache
def setup(dispatch):
  model = build_model(make_cfg(moe_dispatch=dispatch, capacity_factor=1.0))
  tc = config.default_config().train
  tc.warmup_steps, tc.lr, tc.adam_eps = 0, 1e-2, 1e-3  # see test_sharding's optimizer fixture
  opt, schedule = optim.make_optimizer(tc, 10, model.logical_axes), optim.make_schedule(tc, 10)
  one = train.state_shardings(model, opt, mesh_for("one"), RULES)
  create = jax.jit(lambda: train.init_state(model, opt, seed=0), out_shardings=one)
  host_state = jax.device_get(create.lower().compile(FAST)())
  tokens = np.random.default_rng(1).integers(0, MASK, (B, L)).astype(np.int32)
  return model, opt, schedule, host_state, tokens


@functools.cache
def run_step(dispatch, mesh_name):
  model, opt, schedule, host_state, tokens = setup(dispatch)
  mesh = mesh_for(mesh_name)
  shardings = train.state_shardings(model, opt, mesh, RULES)
  b_sh = parallel.batch_sharding(mesh, RULES)
  loss_fn = train.make_loss_fn(model, objectives.get("mdm"),
                               objectives.resolve_args("mdm", None, mask_id=MASK))
  step = train.compile_step(train.make_train_step(loss_fn, opt, schedule), shardings, b_sh)
  state, tok = jax.device_put(host_state, shardings), jax.device_put(tokens, b_sh)
  new_state, metrics = step.lower(state, tok).compile(FAST)(state, tok)
  w_gate = new_state["params"]["blocks"]["mlp"]["w_gate"]  # (layers, expert, embed, mlp)
  assert w_gate.sharding == shardings["params"]["blocks"]["mlp"]["w_gate"]
  return jax.device_get(new_state), jax.device_get(metrics), w_gate.sharding.spec


@pytest.mark.parametrize("dispatch,mesh_name", [("dropless", "data2_expert4"),
                                                ("dropless", "fsdp2_expert4"),
                                                ("capacity", "fsdp2_expert4")])
def test_moe_train_step_matches_single_device(dispatch, mesh_name):
  ref_state, ref_metrics, _ = run_step(dispatch, "one")
  new_state, metrics, spec = run_step(dispatch, mesh_name)
  expected_spec = {"data2_expert4": P(None, "expert", None, None),
                   "fsdp2_expert4": P(None, "expert", "fsdp", None)}[mesh_name]
  assert spec == expected_spec
  for key in ("loss", "grad_norm", "aux_loss", "moe_load_balance_loss", "moe_z_loss",
              "moe_drop_fraction", "moe_load/0"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, atol=1e-7, err_msg=key)
  assert ref_metrics["aux_loss"] > 0
  if dispatch == "capacity":
    assert ref_metrics["moe_drop_fraction"] > 0  # capacity_factor 1: some tokens overflow
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               new_state["params"], ref_state["params"])


# ---- errors -------------------------------------------------------------------------------
def test_bad_settings_are_config_errors():
  with pytest.raises(ConfigError, match=r"experts_per_token=5 .*num_experts=4"):
    make_cfg(experts_per_token=5)
  with pytest.raises(ConfigError, match=r"num_layers=3 .*moe_every=2"):
    make_cfg(num_layers=3, moe_every=2)
  with pytest.raises(ConfigError, match=r"moe_every=3 must be in \[1, model.num_layers=2\]"):
    make_cfg(num_layers=2, moe_every=3)
  assert make_cfg(num_layers=3, moe_every=2, scan_layers=False).moe_every == 2
  with pytest.raises(ConfigError, match="model.router"):
    make_cfg(router="relu")
  with pytest.raises(ConfigError, match="model.moe_dispatch"):
    make_cfg(moe_dispatch="sparse")
  assert make_cfg(num_experts=0, experts_per_token=5).num_experts == 0  # dense ignores MoE keys

  c = config.default_config()
  c.model.num_experts, c.model.experts_per_token = 2, 3
  with pytest.raises(ConfigError, match="experts_per_token"):
    config.validate(c)
  c.model.num_experts, c.model.experts_per_token, c.mesh.expert = 6, 2, 4
  with pytest.raises(ConfigError, match=r"num_experts=6 .*mesh.expert=4"):
    config.validate(c)
  c.mesh.expert = 2
  config.validate(c)
  # Where only the mesh is known (library use), param_shardings names the expert dimension.
  model = build_model(make_cfg(num_experts=6))
  with pytest.raises(ConfigError, match=r"param blocks/mlp/w_(down|gate|up) .*expert=6"):
    parallel.param_shardings(model.abstract_params, model.logical_axes, RULES,
                             mesh_for("data2_expert4"))
