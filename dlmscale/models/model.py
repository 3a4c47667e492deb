"""Functional face of the network: pure `init(key) -> params` and `apply(params, tokens, ...)`.

Params are plain nested dicts of arrays, so optax, Orbax and other JAX codebases see ordinary pytrees.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
from flax import nnx

from dlmscale.models.transformer import ModelConfig, Transformer


def _pure(state) -> dict:
  return nnx.to_pure_dict(state)


@dataclasses.dataclass(frozen=True)
class Model:
  """A built network: its static config, graph definition, parameter shapes and logical axes."""
  cfg: ModelConfig
  graphdef: Any
  abstract_params: dict
  logical_axes: dict

  def init(self, key) -> dict:
    """Fresh parameters (a pure function of the key; jit it with out_shardings to shard at birth)."""
    return _pure(nnx.split(Transformer(self.cfg, key), nnx.Param)[1])

  def apply(self, params: dict, tokens_BxL, *, causal: bool, lengths_B=None, dropout_rates=None,
            dropout_key=None):
    """Forward pass; returns (logits_BxLxV fp32, aux dict with 'aux_loss')."""
    module = nnx.merge(self.graphdef, params)
    return module(tokens_BxL, causal=causal, lengths_B=lengths_B, dropout_rates=dropout_rates,
                  dropout_key=dropout_key)

  def param_counts(self) -> dict[str, int]:
    """Total parameters and non-embedding parameters (embedding and untied head excluded).

    MoE models also report `expert` (routed-expert weights, all experts) and `active` (used per
    token: everything else, shared experts and routers included, plus top-k / E of the routed
    experts). Dense models keep the two keys, so their counts are unchanged for callers."""
    sizes = {"/".join(str(k.key) for k in path): math.prod(leaf.shape)
             for path, leaf in jax.tree_util.tree_flatten_with_path(self.abstract_params)[0]}
    total = sum(sizes.values())
    embedding = sum(v for k, v in sizes.items() if k in ("embed", "head"))
    counts = {"total": total, "non_embedding": total - embedding}
    if self.cfg.num_experts:
      # Routed experts are the w_* siblings of a router (shared experts sit one level deeper).
      moe_dirs = {k.rsplit("/", 1)[0] for k in sizes if k.rsplit("/", 1)[-1] == "router"}
      expert = sum(v for k, v in sizes.items() if k.rsplit("/", 1)[0] in moe_dirs
                   and k.rsplit("/", 1)[-1] in ("w_gate", "w_up", "w_down"))
      # Every MoE layer holds E equal experts, so the per-expert share is exact.
      active_expert = expert // self.cfg.num_experts * self.cfg.experts_per_token
      counts.update(expert=expert, active=total - expert + active_expert)
    return counts


def build_model(cfg: ModelConfig) -> Model:
  """Builds the graph and parameter shapes without allocating parameters."""
  abstract_module = nnx.eval_shape(lambda: Transformer(cfg, jax.random.key(0)))
  graphdef, state = nnx.split(abstract_module, nnx.Param)
  return Model(cfg=cfg, graphdef=graphdef, abstract_params=_pure(state),
               logical_axes=_logical_axes(state))


def _logical_axes(state) -> dict:
  """Nested dict, same structure as the params, of logical axis-name tuples."""
  out: dict = {}
  for path, variable in nnx.to_flat_state(state):
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = tuple(variable.get_metadata()["out_sharding"])
  return out
