"""Helpers shared by several test files."""
import importlib.util
import os
import subprocess

import jax
import jax.numpy as jnp
import numpy as np


def random_params(model, seed=0, std=0.1):
  """Params of the model's shapes: matrices N(0, std), norm scales 1 + N(0, 0.1) (so a scale that
  is ignored or misapplied shows up)."""
  rng = np.random.default_rng(seed)

  def one(path, leaf):
    scale = getattr(path[-1], "key", None) == "scale"
    noise = rng.standard_normal(leaf.shape)
    return jnp.asarray(1.0 + 0.1 * noise if scale else std * noise, jnp.float32)

  return jax.tree_util.tree_map_with_path(one, model.abstract_params)


def cli_env(tmp_path_factory) -> dict:
  """Environment for CLI subprocesses: 8 fake CPU devices and a compilation cache shared by the
  session's runs (same arguments -> same compiled programs)."""
  env = dict(os.environ)
  env.update(XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.getbasetemp() / "jax_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
  return env


TINY_CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "tiny.py")


def tiny_config(**overrides):
  """tests/configs/tiny.py's config; overrides are dotted paths, e.g. {"train.lr": 1e-3}."""
  spec = importlib.util.spec_from_file_location("dlmscale_tests_tiny_config", TINY_CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  cfg = module.get_config()
  for path, value in overrides.items():
    *parents, leaf = path.split(".")
    node = cfg
    for p in parents:
      node = node[p]
    node[leaf] = value
  return cfg


class BackgroundProcess:
  """A command started now; result() waits. Output goes to files, so runs never block."""

  def __init__(self, argv: list[str], env, logdir, name: str, cwd, timeout_s: float):
    self._out = os.path.join(logdir, f"{name}.stdout")
    self._err = os.path.join(logdir, f"{name}.stderr")
    self._timeout_s = timeout_s
    with open(self._out, "w") as out, open(self._err, "w") as err:
      self._proc = subprocess.Popen(argv, cwd=cwd, env=env, stdout=out, stderr=err, text=True)

  def result(self) -> subprocess.CompletedProcess:
    code = self._proc.wait(timeout=self._timeout_s)
    with open(self._out) as out, open(self._err) as err:
      return subprocess.CompletedProcess(self._proc.args, code, out.read(), err.read())

  def kill(self) -> None:
    if self._proc.poll() is None:
      self._proc.kill()
      self._proc.wait()


def one_train_step(model, mesh, objective, tokens_BxL, mask_id, rules=None, compiler_options=None):
  """(lowered, (state, metrics)): the first train step of `model` from seed 0 on `mesh` (AdamW at
  lr 1e-2, no warmup), its state sharded by `rules` (the default rules when None)."""
  from dlmscale import config, objectives, optim, parallel, train
  rules = parallel.DEFAULT_RULES if rules is None else rules
  tc = config.default_config().train
  tc.warmup_steps, tc.lr, tc.adam_eps = 0, 1e-2, 1e-3
  opt, schedule = optim.make_optimizer(tc, 10, model.logical_axes), optim.make_schedule(tc, 10)
  shardings = train.state_shardings(model, opt, mesh, rules)
  state = jax.jit(lambda: train.init_state(model, opt, seed=0), out_shardings=shardings
                  ).lower().compile(compiler_options)()
  b_sh = parallel.batch_sharding(mesh, rules)
  tokens = jax.device_put(np.asarray(tokens_BxL, np.int32), b_sh)
  loss_fn = train.make_loss_fn(model, objectives.get(objective),
                               objectives.resolve_args(objective, None, mask_id=mask_id))
  step = train.make_train_step(loss_fn, opt, schedule, rules=rules,
                               microbatch_sharding=train.microbatch_sharding(mesh, rules))
  lowered = train.compile_step(step, shardings, b_sh).lower(state, tokens)
  return lowered, jax.device_get(lowered.compile(compiler_options)(state, tokens))
