"""A trained model ready for scoring and sampling: network, parameters, tokenizer and mesh.

Every evaluator (likelihoods, benchmarks, samplers, the lm-eval adapter) starts from a
`LoadedModel`, so they all see a checkpoint the same way: `dlmscale.experiment.load_model(cfg,
workdir, objective)` restores one.
"""
from __future__ import annotations

import dataclasses

from dlmscale import parallel


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
