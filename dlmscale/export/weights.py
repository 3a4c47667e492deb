"""dlmscale parameters <-> Hugging Face tensors (Qwen3 / Llama / Qwen3-MoE names, [out, in]).

Both directions walk one table of rules, so a name or transpose fixed in one is fixed in both.
Scanned parameters ([layers, ...] leaves, or [periods, ...] when dense and MoE layers alternate)
are split per layer on the way out and stacked again on the way in.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import numpy as np

from dlmscale.errors import ConfigError
from dlmscale.models.transformer import is_moe_layer, scan_length


class Rule(NamedTuple):
  """One tensor: its path in a layer's (or the top-level) params, its HF name, and the maps."""
  path: tuple
  name: str
  to_hf: Callable
  from_hf: Callable


def _same(x):
  return x


def _t(x):
  return x.T


def _layer_rules(cfg, i: int) -> list[Rule]:
  d, n, k, h = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  p = f"model.layers.{i}"
  # q/k/v: [D, heads, H] <-> [heads * H, D]; o: [N, H, D] <-> [D, N * H].
  proj = lambda heads: (lambda x: x.reshape(d, heads * h).T,
                        lambda y: y.T.reshape(d, heads, h))
  rules = [
      Rule(("attn", "wq"), f"{p}.self_attn.q_proj.weight", *proj(n)),
      Rule(("attn", "wk"), f"{p}.self_attn.k_proj.weight", *proj(k)),
      Rule(("attn", "wv"), f"{p}.self_attn.v_proj.weight", *proj(k)),
      Rule(("attn", "wo"), f"{p}.self_attn.o_proj.weight", lambda x: x.reshape(n * h, d).T,
           lambda y: y.T.reshape(n, h, d)),
      Rule(("attn_norm", "scale"), f"{p}.input_layernorm.weight", _same, _same),
      Rule(("mlp_norm", "scale"), f"{p}.post_attention_layernorm.weight", _same, _same),
  ]
  if cfg.qk_norm:
    rules += [Rule(("attn", "q_norm", "scale"), f"{p}.self_attn.q_norm.weight", _same, _same),
              Rule(("attn", "k_norm", "scale"), f"{p}.self_attn.k_norm.weight", _same, _same)]
  if not is_moe_layer(cfg, i):
    return rules + [Rule(("mlp", w), f"{p}.mlp.{hf}.weight", _t, _t) for w, hf in
                    (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj"))]
  rules.append(Rule(("mlp", "router"), f"{p}.mlp.gate.weight", _t, _t))
  # Stacked experts [E, ...] <-> one [out, in] tensor per expert (the hub's Qwen3-MoE layout).
  for e in range(cfg.num_experts):
    for w, hf in (("w_gate", "gate_proj"), ("w_up", "up_proj"), ("w_down", "down_proj")):
      rules.append(Rule(("mlp", w, e), f"{p}.mlp.experts.{e}.{hf}.weight", _t, _t))
  return rules


def _top_rules(cfg) -> list[Rule]:
  rules = [Rule(("embed",), "model.embed_tokens.weight", _same, _same),
           Rule(("final_norm", "scale"), "model.norm.weight", _same, _same)]
  if not cfg.tie_embeddings:
    rules.append(Rule(("head",), "lm_head.weight", _t, _t))
  return rules


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _layer_slot(cfg, i: int):
  """Where layer i lives: (path prefix under params['blocks'], index along the stacked axis)."""
  if not cfg.scan_layers:
    return (i,), None
  per_step = cfg.num_layers // scan_length(cfg)
  if per_step == 1:
    return (), i
  return ("layers", i % per_step), i // per_step


def _read(params, cfg, i: int, path):
  prefix, index = _layer_slot(cfg, i)
  *head, last = path
  if isinstance(last, int):  # one expert of a stacked [E, ...] weight
    path, expert = tuple(head), last
  else:
    expert = None
  x = _get(params["blocks"], prefix + tuple(path))
  x = x if index is None else x[index]
  return x if expert is None else x[expert]


def tensor_names(cfg) -> list[str]:
  """Every HF tensor name the network has, in order."""
  return [r.name for r in _top_rules(cfg)] + [
      r.name for i in range(cfg.num_layers) for r in _layer_rules(cfg, i)]


def to_hf(params, cfg) -> dict[str, np.ndarray]:
  """HF tensors (fp32 numpy, [out, in]) of a params pytree (host-local arrays)."""
  host = lambda x: np.asarray(jax.device_get(x), np.float32)
  out = {r.name: np.ascontiguousarray(r.to_hf(host(_get(params, r.path))))
         for r in _top_rules(cfg)}
  for i in range(cfg.num_layers):
    for r in _layer_rules(cfg, i):
      out[r.name] = np.ascontiguousarray(r.to_hf(host(_read(params, cfg, i, r.path))))
  return out


def from_hf(read: Callable[[str], np.ndarray], cfg, abstract_params, where: str) -> dict:
  """A params pytree (numpy, the abstract params' dtypes) from HF tensors; `read(name)` returns
  a tensor or None when absent. ConfigError names the first missing or misshapen tensor."""
  def fetch(rule: Rule, shape, dtype):
    y = read(rule.name)
    if y is None:
      raise ConfigError(f"{where}: tensor {rule.name} is missing (the run's model needs it: "
                        "check model.qk_norm, tie_embeddings and the MoE layout)")
    want = jax.eval_shape(rule.to_hf, jax.ShapeDtypeStruct(shape, dtype)).shape
    if tuple(y.shape) != tuple(want):
      raise ConfigError(f"{where}: tensor {rule.name} has shape {tuple(y.shape)} but the run's "
                        f"model needs {tuple(want)}: match the model config to the checkpoint")
    return np.asarray(rule.from_hf(np.asarray(y)), dtype)

  params = jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract_params)
  for r in _top_rules(cfg):
    target = _get(abstract_params, r.path)
    *head, last = r.path
    _get(params, head)[last] = fetch(r, target.shape, target.dtype)
  for i in range(cfg.num_layers):
    prefix, index = _layer_slot(cfg, i)
    for r in _layer_rules(cfg, i):
      *head, last = r.path
      expert = last if isinstance(last, int) else None
      path = tuple(head) if expert is not None else r.path
      stacked = _get(params["blocks"], prefix + path)
      slot = tuple(s for s in (index, expert) if s is not None)
      stacked[slot] = fetch(r, stacked[slot].shape, stacked.dtype)
  return params
