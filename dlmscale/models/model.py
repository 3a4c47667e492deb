"""Functional face of the network: pure `init(key) -> params` and `apply(params, tokens, ...)`.

Params are plain nested dicts of arrays, so optax, Orbax and other JAX codebases see ordinary pytrees.
"""
from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
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
            dropout_key=None, head: bool = True):
    """Forward pass; returns (logits_BxLxV fp32, aux dict with 'aux_loss'), or with head=False
    (HeadInput(x_BxLxD, w_DxV), aux) for cross_entropy.cross_entropy."""
    module = nnx.merge(self.graphdef, params)
    return module(tokens_BxL, causal=causal, lengths_B=lengths_B, dropout_rates=dropout_rates,
                  dropout_key=dropout_key, head=head)

  def init_cache(self, batch_size: int, max_len: int, start_B=None) -> dict:
    """An empty KV cache for `max_len` tokens per row: k and v [num_layers, B, K, max_len, H] in
    the compute dtype (slots after heads: a decode step reads each head's slots contiguously),
    index (next slot to write, int32 scalar) and start_B (int32 [B]): row b is left-padded, its
    real tokens start at slot start_B[b] (default 0) and slot s holds position s - start_B[b], so
    rows of different prompt lengths share slots."""
    c = self.cfg
    shape = (c.num_layers, batch_size, c.num_kv_heads, max_len, c.head_dim)
    start_B = jnp.zeros((batch_size,), jnp.int32) if start_B is None else start_B
    return {"k": jnp.zeros(shape, c.dtype), "v": jnp.zeros(shape, c.dtype),
            "index": jnp.zeros((), jnp.int32), "start_B": jnp.asarray(start_B, jnp.int32)}

  def _inference_module(self, params: dict):
    """The network for cached inference. MoE layers always use dropless dispatch here (capacity
    dispatch groups a whole sequence, so a token-by-token decode could not reproduce its drops)."""
    graphdef = self.graphdef
    if self.cfg.num_experts and self.cfg.moe_dispatch != "dropless":
      graphdef = _dropless_graphdef(self.cfg)
    return nnx.merge(graphdef, params)

  def extend(self, params: dict, cache: dict, tokens_BxT):
    """Causal forward of T new tokens through the KV cache: (logits_BxTxV fp32, new cache)."""
    return self._inference_module(params).extend(tokens_BxT, cache)

  def attend(self, params: dict, tokens_BxT, *, positions_BxT, allowed_BxTxT, kv=None,
             cache_allowed_BxTxS=None):
    """Inference pass with any attention pattern over new tokens and cached keys (see
    Transformer.attend): (logits_BxTxV fp32, (k, v) [num_layers, B, K, T, H] of the new tokens).
    A DLM sampler's block-wise approximate cache is built on it."""
    return self._inference_module(params).attend(
        tokens_BxT, positions_BxT=positions_BxT, allowed_BxTxT=allowed_BxTxT, kv=kv,
        cache_allowed_BxTxS=cache_allowed_BxTxS)

  def prefill(self, params: dict, tokens_BxP, *, max_len: int, start_B=None):
    """Runs a (left-padded, see init_cache) prompt into a fresh cache of `max_len` slots (the
    prompt attends only to itself: the empty slots are not computed)."""
    cache = self.init_cache(tokens_BxP.shape[0], max_len, start_B)
    return self._inference_module(params).extend(tokens_BxP, cache, fresh=True)

  def decode_step(self, params: dict, cache: dict, tokens_B):
    """One token per row at slot cache['index']: (next-token logits_BxV fp32, new cache)."""
    logits_Bx1xV, cache = self.extend(params, cache, tokens_B[:, None])
    return logits_Bx1xV[:, 0], cache

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


@functools.lru_cache(maxsize=16)
def _dropless_graphdef(cfg: ModelConfig):
  """The graph of `cfg`'s network with dropless MoE dispatch (same parameters)."""
  return build_model(dataclasses.replace(cfg, moe_dispatch="dropless")).graphdef


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
