"""dlmscale: token-matched AR vs masked-diffusion LM scaling experiments in JAX.

Public API for use from other JAX code (no CLI needed):
  ModelConfig, build_model          the network (pure init/apply over plain param dicts)
  objectives                         the loss registry: get(name), register(name), names()
  default_config, validate           the experiment config schema
  make_mesh, param_shardings         sharding helpers
  init_state, make_train_step        the pure train step (dlmscale.experiment.load_model restores
                                     a checkpoint)
"""
import importlib

# Imported on first use, so `python -m dlmscale.main` can install its signal handler before JAX
# loads (seconds) and a plain `import dlmscale` stays cheap.
_EXPORTS = {
    "objectives": ("dlmscale.objectives", None),
    "default_config": ("dlmscale.config", "default_config"),
    "validate": ("dlmscale.config", "validate"),
    "Model": ("dlmscale.models.model", "Model"),
    "build_model": ("dlmscale.models.model", "build_model"),
    "ModelConfig": ("dlmscale.models.transformer", "ModelConfig"),
    "make_mesh": ("dlmscale.parallel", "make_mesh"),
    "param_shardings": ("dlmscale.parallel", "param_shardings"),
    "init_state": ("dlmscale.train", "init_state"),
    "make_loss_fn": ("dlmscale.train", "make_loss_fn"),
    "make_train_step": ("dlmscale.train", "make_train_step"),
}
__version__ = "0.1.0"
__all__ = sorted(_EXPORTS)


def __getattr__(name):
  if name not in _EXPORTS:
    raise AttributeError(f"module 'dlmscale' has no attribute {name!r}")
  module, attr = _EXPORTS[name]
  value = importlib.import_module(module)
  return value if attr is None else getattr(value, attr)


def __dir__():
  return sorted(list(globals()) + list(_EXPORTS))
