"""A trained model ready for scoring and sampling: network, parameters, tokenizer and mesh.

Every evaluator (likelihoods, benchmarks, samplers, the lm-eval adapter) starts from a
`LoadedModel`, so they all see a checkpoint the same way: `load_model(cfg, workdir, objective)`.
"""
from __future__ import annotations

import dataclasses
import os

from dlmscale import objectives, parallel


@dataclasses.dataclass
class LoadedModel:
  """Parameters (sharded on `mesh`) of one objective's checkpoint, with what is needed to use them.

  kind is 'ar' (causal, next-token) or 'dlm' (bidirectional, predicts masked positions);
  seq_len is the training context window, the longest input the model has seen."""
  model: object
  params: dict
  tokenizer: object
  kind: str
  objective: str
  mesh: object
  rules: tuple
  seq_len: int
  step: int
  cfg: object

  @property
  def batch_sharding(self):
    return parallel.batch_sharding(self.mesh, self.rules)

  @property
  def data_parallel_size(self) -> int:
    return parallel.data_parallel_size(self.mesh, self.rules)


def load_model(cfg, workdir: str, objective: str | None = None) -> LoadedModel:
  """The latest checkpoint of `objective` (default: the config's first) in workdir/<objective>."""
  from dlmscale import config as config_lib, runner  # imported only when a checkpoint is loaded
  objective = objective or config_lib.objective_names(cfg)[0]
  exp = runner.build_experiment(cfg, objective)
  params, step = runner.restore_params(exp, os.path.join(workdir, objective))
  return from_experiment(exp, params, step)


def from_experiment(exp, params, step: int = 0) -> LoadedModel:
  """Wraps an in-memory experiment's parameters (evaluation during training, tests)."""
  return LoadedModel(model=exp.model, params=params, tokenizer=exp.corpus.tokenizer,
                     kind=objectives.kind_of(exp.objective), objective=exp.objective,
                     mesh=exp.mesh, rules=tuple(exp.cfg.rules), seq_len=exp.cfg.data.seq_len,
                     step=step, cfg=exp.cfg)
