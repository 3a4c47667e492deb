"""Train state and the train step: pure functions, jitted with explicit shardings by `compile_step`.

State is a plain dict {step, params, opt_state, rng}; the per-step key is fold_in(rng, step), so the
randomness of step s does not depend on how the run got there (resume is bitwise exact).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding, PartitionSpec as P

from dlmscale import parallel
from dlmscale.models.model import Model

TrainState = dict[str, Any]


def init_state(model: Model, optimizer: optax.GradientTransformation, seed: int,
               params=None) -> TrainState:
  """A fresh state; pure function of the seed (and of `params` when given: model.init_from)."""
  k_params, k_steps = jax.random.split(jax.random.key(seed))
  params = model.init(k_params) if params is None else params
  return {"step": jnp.zeros((), jnp.int32), "params": params,
          "opt_state": optimizer.init(params), "rng": jax.random.key_data(k_steps)}


def state_shardings(model: Model, optimizer, mesh, rules) -> TrainState:
  """NamedShardings for every leaf of the state: optimizer moments follow their params."""
  p_sh = parallel.param_shardings(model.abstract_params, model.logical_axes, rules, mesh)
  abstract_opt = jax.eval_shape(optimizer.init, model.abstract_params)
  rep = parallel.replicated(mesh)
  opt_sh = optax.tree_map_params(optimizer, lambda _, s: s, abstract_opt, p_sh,
                                 transform_non_params=lambda _: rep)
  return {"step": rep, "params": p_sh, "opt_state": opt_sh, "rng": rep}


# fold_in tag of the step key for the model's own dropout (model.dropout_*), kept apart from the
# key the objective draws its noise (mask times, masks) from.
MODEL_DROPOUT_STREAM = 0x6D64


def make_loss_fn(model: Model, objective: Callable, objective_args: Mapping[str, Any]):
  """(params, tokens_BxL, rng) -> (loss, metrics) for one objective. Every objective's forward
  applies the model config's dropout with a key of the step, unless the objective passes its own
  rates and key (ar_dropout); evaluation calls the model without a key, so without dropout."""
  def loss_fn(params, tokens_BxL, rng):
    forward = functools.partial(model.apply,
                                dropout_key=jax.random.fold_in(rng, MODEL_DROPOUT_STREAM))
    return objective(forward, params, {"tokens": tokens_BxL}, rng, objective_args)
  return loss_fn


def make_train_step(loss_fn, optimizer, schedule, *, grad_accum: int = 1,
                    microbatch_sharding: NamedSharding | None = None, rules=None):
  """state, tokens_BxL -> state, metrics. With grad_accum > 1 the batch is split into strided
  microbatches (row i goes to microbatch i % A, so each stays spread over the data axes) and
  gradients are averaged, which equals one big batch for per-batch-mean losses.

  With `rules` (and microbatch_sharding's mesh) the model's activations are pinned to the batch
  axes while tracing (parallel.activation_sharding)."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

  def step(state: TrainState, tokens_BxL):
    if rules is None or microbatch_sharding is None:
      return _step(state, tokens_BxL)
    with parallel.activation_sharding(microbatch_sharding.mesh, rules):
      return _step(state, tokens_BxL)

  def _step(state: TrainState, tokens_BxL):
    rng = jax.random.fold_in(jax.random.wrap_key_data(state["rng"]), state["step"])
    params = state["params"]
    if grad_accum == 1:
      (loss, metrics), grads = grad_fn(params, tokens_BxL, rng)
    else:
      b, l = tokens_BxL.shape
      micro_AxBxL = tokens_BxL.reshape(b // grad_accum, grad_accum, l).swapaxes(0, 1)
      if microbatch_sharding is not None:
        micro_AxBxL = jax.lax.with_sharding_constraint(micro_AxBxL, microbatch_sharding)

      def accumulate(carry, xs):
        i, tokens = xs
        (loss_i, metrics_i), grads_i = grad_fn(params, tokens, jax.random.fold_in(rng, i))
        return jax.tree.map(jnp.add, carry, (loss_i, metrics_i, grads_i)), None

      zeros = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, micro_AxBxL[0], rng))
      zeros = (zeros[0][0], zeros[0][1], zeros[1])
      total, _ = jax.lax.scan(accumulate, zeros, (jnp.arange(grad_accum), micro_AxBxL))
      loss, metrics, grads = jax.tree.map(lambda x: x / grad_accum, total)
    updates, opt_state = optimizer.update(grads, state["opt_state"], params)
    new_state = {"step": state["step"] + 1, "params": optax.apply_updates(params, updates),
                 "opt_state": opt_state, "rng": state["rng"]}
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads),
                   lr=schedule(state["step"]))
    return new_state, metrics

  return step


def compile_step(step_fn, shardings: TrainState, batch_sharding: NamedSharding):
  """jax.jit with explicit in/out shardings and the state donated (the pjit of today)."""
  return jax.jit(step_fn, in_shardings=(shardings, batch_sharding),
                 out_shardings=(shardings, None), donate_argnums=0)


def microbatch_sharding(mesh, rules) -> NamedSharding:
  spec = parallel.batch_sharding(mesh, rules).spec
  return NamedSharding(mesh, P(None, *spec))


def create_state(model: Model, optimizer, seed: int, shardings: TrainState,
                 params=None) -> TrainState:
  """Initialises the state directly into its shardings (no full copy on any one device);
  `params` (host arrays, e.g. from model.init_from) replace the random init."""
  if params is not None:
    params = jax.device_put(params, shardings["params"])
  options = None
  if jax.devices()[0].platform == "cpu":
    # Init runs once; LLVM's optimisation of its RNG code costs more time than it saves.
    options = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
  return jax.jit(lambda p: init_state(model, optimizer, seed, p), out_shardings=shardings,
                 compiler_options=options)(params)
