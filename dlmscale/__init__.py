"""dlmscale: token-matched AR vs masked-diffusion LM scaling experiments in JAX.

Public API for use from other JAX code (no CLI needed):
  ModelConfig, build_model          the network (pure init/apply over plain param dicts)
  objectives                         the loss registry: get(name), register(name), names()
  default_config, validate           the experiment config schema
  make_mesh, param_shardings         sharding helpers
  init_state, make_train_step        the pure train step (dlmscale.experiment.load_model restores
                                     a checkpoint)
"""
from dlmscale import objectives
from dlmscale.config import default_config, validate
from dlmscale.models.model import Model, build_model
from dlmscale.models.transformer import ModelConfig
from dlmscale.parallel import make_mesh, param_shardings
from dlmscale.train import init_state, make_loss_fn, make_train_step

__version__ = "0.1.0"
__all__ = [
    "Model", "ModelConfig", "build_model", "default_config", "init_state", "make_loss_fn",
    "make_mesh", "make_train_step", "objectives", "param_shardings", "validate",
]
