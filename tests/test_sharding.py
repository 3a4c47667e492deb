"""Sharding: one device vs 8 fake devices under data, fsdp and data x tensor meshes give the same
losses, gradients and train step; gradient accumulation equals one big batch; params are laid out
as the rules say; bad meshes and indivisible dimensions are one-line ConfigErrors."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

from dlmscale import config, objectives, optim, parallel, train
from dlmscale.errors import ConfigError
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig

V, L, B = 64, 16, 16
MASK = V - 1
RULES = parallel.DEFAULT_RULES
MESHES = {"data8": dict(data=8), "fsdp8": dict(fsdp=8), "data2_tensor4": dict(data=2, tensor=4),
          "data2_fsdp2_tensor2": dict(data=2, fsdp=2, tensor=2)}
# Test-only codegen settings (LLVM -O0, legacy CPU fusion emitters): compiles ~5x faster on CPU
# than the defaults; every mesh is compiled the same way.
FAST = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}


def make_cfg(**kw):
  # One (scanned) layer: sharding is per parameter, and XLA unrolls short scans, so every extra
  # layer is extra compile time.
  return ModelConfig(**dict(dict(vocab_size=V, num_layers=1, d_model=32, num_heads=4, d_ff=64,
                                 dtype="float32"), **kw))


@functools.cache
def mesh_for(name):
  if name == "one":
    return parallel.make_mesh({"data": -1}, devices=jax.devices()[:1])
  return parallel.make_mesh(MESHES[name])


@pytest.fixture(scope="module")
def model():
  return build_model(make_cfg())


@pytest.fixture(scope="module")
def host_params(model):
  rng = np.random.default_rng(0)
  return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32),
                      model.abstract_params)


@pytest.fixture(scope="module")
def tokens():
  return np.random.default_rng(1).integers(0, MASK, (B, L)).astype(np.int32)


def loss_fns(model):
  return {name: train.make_loss_fn(model, objectives.get(name),
                                   objectives.resolve_args(name, None, mask_id=MASK))
          for name in ("ar", "mdm")}


@pytest.fixture(scope="module")
def losses_and_grads(model, host_params, tokens):
  """mesh name -> {objective: (loss, grads as numpy)}; computed once per mesh, same rng."""
  fns = loss_fns(model)
  cache = {}

  def get(mesh_name):
    if mesh_name not in cache:
      mesh = mesh_for(mesh_name)
      p_sh = parallel.param_shardings(model.abstract_params, model.logical_axes, RULES, mesh)
      b_sh = parallel.batch_sharding(mesh, RULES)

      def both(params, tok, rng):
        return {n: jax.value_and_grad(lambda p, f=f: f(p, tok, rng)[0])(params)
                for n, f in fns.items()}

      f = jax.jit(both, in_shardings=(p_sh, b_sh, parallel.replicated(mesh)),
                  compiler_options=FAST)
      params = jax.device_put(host_params, p_sh)
      # The inputs really are laid out over the mesh before the computation.
      assert params["embed"].sharding == p_sh["embed"]
      out = f(params, jax.device_put(tokens, b_sh), jax.random.key(42))
      cache[mesh_name] = jax.device_get(out)
    return cache[mesh_name]

  return get


@pytest.mark.parametrize("mesh_name", ["data8", "fsdp8", "data2_tensor4"])
def test_loss_and_grads_match_single_device(losses_and_grads, mesh_name):
  ref, got = losses_and_grads("one"), losses_and_grads(mesh_name)
  for objective in ("ar", "mdm"):
    (loss_ref, g_ref), (loss, g) = ref[objective], got[objective]
    assert np.isfinite(loss_ref) and loss_ref > 1.0
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g), jax.tree.leaves(g_ref)):
      scale = np.abs(b).max()
      assert scale > 0, path
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * scale,
                                 err_msg=f"{objective} {jax.tree_util.keystr(path)}")
  # ar and mdm really are different losses (the same rng drives only mdm's masks).
  assert abs(ref["ar"][0] - ref["mdm"][0]) > 1e-2


# ---- one full train step ------------------------------------------------------------------
@pytest.fixture(scope="module")
def optimizer(model):
  tc = config.default_config().train
  tc.warmup_steps = 0  # lr > 0 at step 0, so one step moves the params
  tc.lr = 1e-2
  # Adam's first update is g / (|g| + eps): with the default eps 1e-8 that is sign(g), which turns
  # fp32 reduction-order noise in a near-zero gradient into a jump of up to 2 lr. A larger eps
  # keeps the update a smooth function of the gradient, so the comparison below can be tight.
  tc.adam_eps = 1e-3
  return optim.make_optimizer(tc, 10, model.logical_axes), optim.make_schedule(tc, 10)


@pytest.fixture(scope="module")
def fsdp_state(model, optimizer):
  """A state initialised directly into its {fsdp: 8} shardings. This is train.create_state's
  body, compiled with FAST: create_state itself spends ~18 s in LLVM on the threefry init code."""
  opt, _ = optimizer
  shardings = train.state_shardings(model, opt, mesh_for("fsdp8"), RULES)
  create = jax.jit(lambda: train.init_state(model, opt, seed=0), out_shardings=shardings)
  return create.lower().compile(FAST)(), shardings


def run_step(model, optimizer, host_state, tokens, mesh_name, objective="mdm"):
  opt, schedule = optimizer
  mesh = mesh_for(mesh_name)
  shardings = train.state_shardings(model, opt, mesh, RULES)
  b_sh = parallel.batch_sharding(mesh, RULES)
  loss_fn = loss_fns(model)[objective]
  step = train.compile_step(train.make_train_step(loss_fn, opt, schedule), shardings, b_sh)
  state = jax.device_put(host_state, shardings)
  tok = jax.device_put(tokens, b_sh)
  new_state, metrics = step.lower(state, tok).compile(FAST)(state, tok)
  # Output state keeps the declared shardings (jit out_shardings).
  assert new_state["params"]["embed"].sharding == shardings["params"]["embed"]
  return jax.device_get(new_state), jax.device_get(metrics)


@pytest.fixture(scope="module")
def step_reference(model, optimizer, fsdp_state, tokens):
  host_state = jax.device_get(fsdp_state[0])
  return host_state, run_step(model, optimizer, host_state, tokens, "one")


@pytest.mark.parametrize("mesh_name", list(MESHES))
def test_train_step_matches_single_device(model, optimizer, step_reference, tokens, mesh_name):
  """One compile_step'd AdamW step of `mdm` (its rng comes from the state) gives the
  single-device params, Adam moments and metrics."""
  host_state, (ref_state, ref_metrics) = step_reference
  new_state, metrics = run_step(model, optimizer, host_state, tokens, mesh_name)
  assert int(new_state["step"]) == 1 == int(ref_state["step"])
  for key in ("loss", "grad_norm", "lr", "mask_fraction"):
    np.testing.assert_allclose(metrics[key], ref_metrics[key], rtol=1e-5, err_msg=key)
  assert ref_metrics["lr"] == pytest.approx(1e-2)
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ref_state["params"], host_state["params"])
  assert min(jax.tree.leaves(moved)) > 1e-4  # the step changed every parameter
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               new_state["params"], ref_state["params"])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-9),
               new_state["opt_state"], ref_state["opt_state"])


# ---- gradient accumulation ----------------------------------------------------------------
def test_grad_accum_equals_one_big_batch(model, host_params, tokens, losses_and_grads):
  """With SGD at lr 1 the step's update is minus the gradient: A = 2 strided microbatches of the
  per-batch-mean `ar` loss (on {data: 8}, with the microbatch sharding) must give the gradient of
  A = 1 on the same batch, and both that of plain value_and_grad on the whole batch."""
  mesh = mesh_for("data8")
  opt = optax.sgd(1.0)
  shardings = train.state_shardings(model, opt, mesh, RULES)
  b_sh = parallel.batch_sharding(mesh, RULES)
  # Host (numpy) leaves: device_put copies them, so donating the state deletes nothing of ours.
  state = {"step": np.zeros((), np.int32), "params": host_params,
           "opt_state": opt.init(host_params),
           "rng": np.asarray(jax.random.key_data(jax.random.key(0)))}
  micro = train.microbatch_sharding(mesh, RULES)
  assert micro.spec == P(None, "data", None)
  grads, metrics = {}, {}
  for accum in (1, 2):
    step = train.compile_step(
        train.make_train_step(loss_fns(model)["ar"], opt, optax.constant_schedule(1.0),
                              grad_accum=accum, microbatch_sharding=micro), shardings, b_sh)
    s, tok = jax.device_put(state, shardings), jax.device_put(tokens, b_sh)
    new_state, metrics[accum] = jax.device_get(step.lower(s, tok).compile(FAST)(s, tok))
    grads[accum] = jax.tree.map(lambda a, b: a - b, host_params, new_state["params"])
  loss_ref, g_ref = losses_and_grads("one")["ar"]
  for accum in (1, 2):
    np.testing.assert_allclose(metrics[accum]["loss"], loss_ref, rtol=1e-5)
    np.testing.assert_allclose(metrics[accum]["grad_norm"], optax.tree.norm(g_ref), rtol=1e-5)
  leaves = zip(jax.tree_util.tree_leaves_with_path(grads[2]), jax.tree.leaves(grads[1]),
               jax.tree.leaves(g_ref))
  for (path, a2), a1, ref in leaves:
    # atol: params - new_params loses ~1e-9 to fp32 rounding of the 0.05-sized params.
    tol = dict(rtol=1e-4, atol=1e-8 + 1e-5 * np.abs(ref).max(), err_msg=jax.tree_util.keystr(path))
    np.testing.assert_allclose(a2, a1, **tol)
    np.testing.assert_allclose(a1, ref, **tol)


# ---- layouts and errors -------------------------------------------------------------------
def test_params_are_sharded_as_the_rules_say(model, fsdp_state):
  state, shardings = fsdp_state
  embed = state["params"]["embed"]
  assert embed.sharding.spec == P(None, "fsdp")
  assert {s.data.shape for s in embed.addressable_shards} == {(V, 32 // 8)}
  assert len(embed.sharding.device_set) == 8
  wq = state["params"]["blocks"]["attn"]["wq"]  # (layers, embed, heads, kv)
  assert wq.sharding.spec == P(None, "fsdp", None, None)
  assert state["params"]["final_norm"]["scale"].sharding.spec == P(None)
  # Adam moments follow their params; scalars are replicated.
  adam = state["opt_state"][1][0]
  assert adam.mu["embed"].sharding.spec == P(None, "fsdp")
  assert adam.nu["blocks"]["mlp"]["w_down"].sharding.spec == P(None, None, "fsdp")
  assert adam.count.sharding.spec == P()
  assert float(jnp.std(embed)) == pytest.approx(model.cfg.init_std, rel=0.1)  # model.init ran

  mesh = mesh_for("data2_tensor4")
  p_sh = parallel.param_shardings(model.abstract_params, model.logical_axes, RULES, mesh)
  assert p_sh["embed"].spec == P("tensor", None)
  assert p_sh["blocks"]["attn"]["wq"].spec == P(None, None, "tensor", None)
  assert p_sh["blocks"]["attn"]["wo"].spec == P(None, "tensor", None, None)
  assert p_sh["blocks"]["mlp"]["w_down"].spec == P(None, "tensor", None)
  assert p_sh["blocks"]["attn_norm"]["scale"].spec == P(None, None)
  assert parallel.batch_sharding(mesh, RULES).spec == P("data", None)
  assert parallel.batch_sharding(mesh_for("fsdp8"), RULES).spec == P("fsdp", None)
  assert parallel.data_parallel_size(mesh, RULES) == 2
  placed = jax.device_put(np.zeros((V, 32), np.float32), p_sh["embed"])
  assert {s.data.shape for s in placed.addressable_shards} == {(V // 4, 32)}
  # One device: everything replicated, nothing split.
  one = parallel.param_shardings(model.abstract_params, model.logical_axes, RULES, mesh_for("one"))
  assert all(all(a is None for a in s.spec) for s in jax.tree.leaves(one))


def test_indivisible_dimension_names_the_param():
  mesh = mesh_for("data2_tensor4")
  bad_ff = build_model(make_cfg(d_ff=34))
  with pytest.raises(ConfigError, match=r"param blocks/mlp/w_(down|gate|up) .*mlp=34"):
    parallel.param_shardings(bad_ff.abstract_params, bad_ff.logical_axes, RULES, mesh)
  bad_vocab = build_model(make_cfg(vocab_size=66))
  with pytest.raises(ConfigError, match=r"param embed .*vocab=66"):
    parallel.param_shardings(bad_vocab.abstract_params, bad_vocab.logical_axes, RULES, mesh)
  # 4 heads cannot be split 8 ways.
  good = build_model(make_cfg())
  with pytest.raises(ConfigError, match=r"param blocks/attn/w"):
    parallel.param_shardings(good.abstract_params, good.logical_axes, RULES,
                             parallel.make_mesh(dict(tensor=8)))
  with pytest.raises(ConfigError, match="batch"):
    parallel.logical_to_spec(("batch", None), dict(RULES), mesh_for("data8"), (12, L), "batch")


def test_make_mesh_rejects_bad_shapes():
  assert dict(mesh_for("data2_tensor4").shape) == {"data": 2, "fsdp": 1, "tensor": 4, "expert": 1}
  assert parallel.make_mesh({"fsdp": -1, "tensor": 2}).shape["fsdp"] == 4
  for shape in ({"data": 3}, {"data": 3, "fsdp": -1}, {"data": 4, "tensor": 4},
                {"data": -1, "fsdp": -1}, {"data": 0, "fsdp": -1}, {"pipeline": 8}):
    with pytest.raises(ConfigError):
      parallel.make_mesh(shape)
  with pytest.raises(ConfigError, match="3"):
    parallel.make_mesh({"data": 3})
  with pytest.raises(ConfigError):
    parallel.make_mesh({"data": 2}, devices=jax.devices()[:1])
