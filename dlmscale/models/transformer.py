"""Dense pre-norm transformer; causal or bidirectional attention is chosen per call.

One network serves every objective: AR calls it causally, masked diffusion bidirectionally.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from dlmscale.errors import ConfigError
from dlmscale.parallel import constrain
from dlmscale.models.cross_entropy import HeadInput
from dlmscale.models.layers import (ATTENTION_IMPLS, SAVED_ATTENTION, Attention, RMSNorm, SwiGLU,
                                     dropout, param)
from dlmscale.models.moe import DISPATCHES, ROUTERS, MoE

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "dots": jax.checkpoint_policies.checkpoint_dots,
    "dots_no_batch": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # Every projection's matmul output (2-D dots: layers.linear) and attention's output and
    # logsumexp; never attention's L x S scores (which 'dots' saves: they are batched dots), so
    # the backward pass recomputes norms, activations, RoPE and the probabilities.
    "minimal": jax.checkpoint_policies.save_from_both_policies(
        jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
        jax.checkpoint_policies.save_only_these_names(*SAVED_ATTENTION)),
}
DROPOUT_SITES = ("attention", "residual", "mlp")


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Static shape and numerics of the network (hashable: it is closed over by jitted code)."""
  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  d_ff: int
  num_kv_heads: int = 0  # 0: same as num_heads (full multi-head attention)
  head_dim: int = 0  # 0: d_model // num_heads
  tie_embeddings: bool = True
  rope_base: float = 10000.0
  norm_eps: float = 1e-6
  init_std: float = 0.02
  qk_norm: bool = True
  dtype: Any = jnp.bfloat16
  param_dtype: Any = jnp.float32
  scan_layers: bool = True
  remat: str = "none"
  attention: str = "auto"  # training attention: layers.attention_impl (auto, einsum, chunked, ...)
  dropout_attention: float = 0.0
  dropout_residual: float = 0.0
  dropout_mlp: float = 0.0
  # Mixture of experts (num_experts 0: every feed-forward is the dense SwiGLU).
  num_experts: int = 0
  experts_per_token: int = 2  # top-k
  # Layers k-1, 2k-1, ... are MoE, the others dense; scanned, the scan body is one period of k.
  moe_every: int = 1
  moe_d_ff: int = 0  # 0: d_ff
  num_shared_experts: int = 0
  router: str = "softmax"  # or "sigmoid"
  renormalize_topk: bool = False
  moe_dispatch: str = "dropless"  # or "capacity"
  capacity_factor: float = 1.25
  load_balance_coef: float = 0.01
  router_z_coef: float = 0.001

  def __post_init__(self):
    problem = moe_config_problem(self)
    if problem:
      raise ConfigError(problem)
    if self.attention not in ATTENTION_IMPLS:
      raise ConfigError(f"unknown model.attention {self.attention!r}: use one of "
                        f"{list(ATTENTION_IMPLS)}")
    if not self.num_kv_heads:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    if not self.head_dim:
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    for name in ("dtype", "param_dtype"):
      object.__setattr__(self, name, jnp.dtype(getattr(self, name)))

  @property
  def dropout_rates(self) -> dict[str, float]:
    return {s: getattr(self, f"dropout_{s}") for s in DROPOUT_SITES}


def moe_config_problem(cfg) -> str | None:
  """One-line description (with the fix) of an invalid MoE setting, or None. `cfg` is anything
  with ModelConfig's MoE attributes (a ModelConfig or the config's model ConfigDict)."""
  e = cfg.num_experts
  if e < 0:
    return f"model.num_experts must be >= 0 (0: dense), got {e}"
  if not e:
    return None
  if not 1 <= cfg.experts_per_token <= e:
    return (f"model.experts_per_token={cfg.experts_per_token} must be in [1, model.num_experts="
            f"{e}]: lower the top-k or add experts")
  if cfg.router not in ROUTERS:
    return f"unknown model.router {cfg.router!r}: use one of {list(ROUTERS)}"
  if cfg.moe_dispatch not in DISPATCHES:
    return f"unknown model.moe_dispatch {cfg.moe_dispatch!r}: use one of {list(DISPATCHES)}"
  if cfg.moe_every < 1 or cfg.moe_every > cfg.num_layers:
    return (f"model.moe_every={cfg.moe_every} must be in [1, model.num_layers="
            f"{cfg.num_layers}]")
  if cfg.scan_layers and cfg.num_layers % cfg.moe_every:
    return (f"model.num_layers={cfg.num_layers} is not a multiple of model.moe_every="
            f"{cfg.moe_every}: scanned layers repeat whole periods (or set scan_layers=False)")
  if cfg.capacity_factor <= 0:
    return f"model.capacity_factor must be > 0, got {cfg.capacity_factor}"
  return None


def is_moe_layer(cfg: ModelConfig, i: int) -> bool:
  return cfg.num_experts > 0 and i % cfg.moe_every == cfg.moe_every - 1


MOE_METRICS = ("load_balance_loss", "z_loss", "drop_fraction")
ACTIVATION_AXES = ("batch", None, None)  # the [B, L, D] residual stream's logical axes
CACHE_AXES = ("layers", "batch", "kv_heads", None, "kv")  # a KV cache's [N, B, K, S, H]


class Block(nnx.Module):
  """Pre-norm residual block: x + attn(norm(x)), then x + mlp(norm(x)); mlp is MoE or SwiGLU."""

  def __init__(self, cfg: ModelConfig, key, moe: bool = False):
    ka, km = jax.random.split(key)
    self.attn_norm = RMSNorm(cfg.d_model, "norm", eps=cfg.norm_eps, param_dtype=cfg.param_dtype)
    self.attn = Attention(cfg, ka)
    self.mlp_norm = RMSNorm(cfg.d_model, "norm", eps=cfg.norm_eps, param_dtype=cfg.param_dtype)
    self.moe = moe
    self.mlp = MoE(cfg, km) if moe else SwiGLU(cfg, km)

  def __call__(self, x_BxLxD, *, causal, lengths_B, rates, key):
    k_attn, k_res1, k_mlp, k_res2 = jax.random.split(key, 4) if key is not None else (None,) * 4
    h = self.attn(self.attn_norm(x_BxLxD), causal=causal, lengths_B=lengths_B,
                  dropout_rate=rates["attention"], key=k_attn)
    x_BxLxD = x_BxLxD + dropout(h, rates["residual"], k_res1)
    h = self.mlp(self.mlp_norm(x_BxLxD), dropout_rate=rates["mlp"], key=k_mlp)
    aux = None
    if self.moe:
      h, aux = h
    return x_BxLxD + dropout(h, rates["residual"], k_res2), aux

  def attend(self, x_BxTxD, kv, **attend):
    """Inference (Attention.attend); kv: None or this layer's cached (k_BxKxSxH, v_BxKxSxH).
    Returns (x_BxTxD, (k_BxKxTxH, v_BxKxTxH) of the new tokens)."""
    cache = None if kv is None else (*kv, attend["cache_allowed_BxTxS"])
    h, k, v = self.attn.attend(self.attn_norm(x_BxTxD), attend["positions_BxT"],
                               attend["allowed_BxTxT"], cache)
    x_BxTxD = x_BxTxD + h
    h = self.mlp(self.mlp_norm(x_BxTxD))
    if self.moe:
      h, _ = h
    return x_BxTxD + h, (k, v)


class Period(nnx.Module):
  """moe_every consecutive blocks, the last one MoE: the scan body of an interleaved model."""

  def __init__(self, cfg: ModelConfig, key):
    keys = jax.random.split(key, cfg.moe_every)
    self.layers = nnx.List([Block(cfg, k, moe=is_moe_layer(cfg, i)) for i, k in enumerate(keys)])

  def __call__(self, x_BxLxD, *, causal, lengths_B, rates, key):
    n = len(self.layers)
    keys = jax.random.split(key, n) if key is not None else [None] * n
    for layer, k in zip(self.layers, keys):
      x_BxLxD, aux = layer(x_BxLxD, causal=causal, lengths_B=lengths_B, rates=rates, key=k)
    return x_BxLxD, aux

  def attend(self, x_BxTxD, kv, **attend):
    """Block.attend over the period; kv arrays (and the returned ones) have a leading
    [moe_every] layer axis."""
    ks, vs = [], []
    for i, layer in enumerate(self.layers):
      x_BxTxD, (k, v) = layer.attend(x_BxTxD, None if kv is None else (kv[0][i], kv[1][i]),
                                     **attend)
      ks.append(k)
      vs.append(v)
    return x_BxTxD, (jnp.stack(ks), jnp.stack(vs))


def scan_length(cfg: ModelConfig) -> int:
  """Scan iterations: layers, or periods of moe_every layers when dense and MoE interleave."""
  interleaved = cfg.num_experts and cfg.moe_every > 1
  return cfg.num_layers // cfg.moe_every if interleaved else cfg.num_layers


@nnx.vmap(in_axes=(None, 0), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
def _stacked_blocks(cfg, keys):
  if scan_length(cfg) != cfg.num_layers:
    return Period(cfg, keys)
  return Block(cfg, keys, moe=cfg.num_experts > 0)


class Transformer(nnx.Module):
  """Token embedding, a stack of blocks (optionally scanned and rematerialised), final norm, head."""

  def __init__(self, cfg: ModelConfig, key):
    ke, kb, kh = jax.random.split(key, 3)
    self.cfg = cfg
    pd = cfg.param_dtype
    self.embed = param(ke, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), std=cfg.init_std,
                       dtype=pd)
    if cfg.scan_layers:
      self.blocks = _stacked_blocks(cfg, jax.random.split(kb, scan_length(cfg)))
    else:
      block_keys = jax.random.split(kb, cfg.num_layers)
      self.blocks = nnx.List([Block(cfg, k, moe=is_moe_layer(cfg, i))
                              for i, k in enumerate(block_keys)])
    self.final_norm = RMSNorm(cfg.d_model, "norm", eps=cfg.norm_eps, param_dtype=pd)
    if not cfg.tie_embeddings:
      self.head = param(kh, (cfg.d_model, cfg.vocab_size), ("embed", "vocab"), std=cfg.init_std,
                        dtype=pd)

  def __call__(self, tokens_BxL, *, causal: bool, lengths_B=None, dropout_rates=None,
               dropout_key=None, head: bool = True):
    """Returns (logits_BxLxV in fp32, aux) where aux['aux_loss'] is added by objectives; with
    head=False, (HeadInput(final-normed x_BxLxD, w_DxV), aux) for a cross-entropy that never
    materialises the logits (models/cross_entropy.py).

    MoE models add to aux the MoE layers' mean load_balance_loss, z_loss, drop_fraction (scalars)
    and expert_load [E]; aux_loss is the sum over layers of each layer's weighted terms."""
    cfg = self.cfg
    unknown = sorted(set(dropout_rates or {}) - set(DROPOUT_SITES))
    if unknown:  # a misspelt site would otherwise silently train without that dropout
      raise ConfigError(f"unknown dropout sites {unknown}: use any of {list(DROPOUT_SITES)}")
    rates = dict(cfg.dropout_rates, **(dropout_rates or {}))
    if not any(rates.values()):
      dropout_key = None
    x_BxLxD = jnp.take(self.embed[...], tokens_BxL, axis=0).astype(cfg.dtype)

    def run_block(block, x, key):
      # The residual stream stays sharded by batch between layers (a no-op outside training).
      x = constrain(x, ACTIVATION_AXES)
      x, aux = block(x, causal=causal, lengths_B=lengths_B, rates=rates, key=key)
      return constrain(x, ACTIVATION_AXES), aux

    n = scan_length(cfg) if cfg.scan_layers else cfg.num_layers
    layer_keys = jax.random.split(dropout_key, n) if dropout_key is not None else [None] * n
    policy = REMAT_POLICIES[cfg.remat]
    if cfg.scan_layers:
      graphdef, stacked = nnx.split(self.blocks)

      def body(x, layer):
        layer_state, key = layer
        return run_block(nnx.merge(graphdef, layer_state), x, key)

      if cfg.remat != "none":
        body = jax.checkpoint(body, policy=policy, prevent_cse=False)
      xs = (stacked, layer_keys if dropout_key is not None else None)
      x_BxLxD, layer_aux = jax.lax.scan(body, x_BxLxD, xs, length=n)
      # Stacked [n, ...] aux (one MoE layer per scan step) -> list of per-layer dicts.
      moe_aux = ([jax.tree.map(lambda a, i=i: a[i], layer_aux) for i in range(n)]
                 if layer_aux is not None else [])
    else:
      moe_aux = []
      for block, key in zip(self.blocks, layer_keys):
        if cfg.remat != "none":
          g, s = nnx.split(block)
          x_BxLxD, aux = jax.checkpoint(lambda s, x, k, g=g: run_block(nnx.merge(g, s), x, k),
                                        policy=policy)(s, x_BxLxD, key)
        else:
          x_BxLxD, aux = run_block(block, x_BxLxD, key)
        if aux is not None:
          moe_aux.append(aux)
    x_BxLxD = self.final_norm(x_BxLxD)
    w_DxV = self.embed[...].T if cfg.tie_embeddings else self.head[...]
    if head:
      logits_BxLxV = jnp.einsum("bld,dv->blv", x_BxLxD, w_DxV.astype(cfg.dtype),
                                preferred_element_type=jnp.float32)
      out = constrain(logits_BxLxV, ("batch", None, "vocab"))
    else:
      out = HeadInput(x_BxLxD, w_DxV.astype(cfg.dtype))
    if not moe_aux:
      return out, {"aux_loss": jnp.zeros((), jnp.float32)}
    aux = {name: sum(a[name] for a in moe_aux) / len(moe_aux)
           for name in MOE_METRICS + ("expert_load",)}
    aux["aux_loss"] = sum(a["aux_loss"] for a in moe_aux)
    return out, aux

  def attend(self, tokens_BxT, *, positions_BxT, allowed_BxTxT, kv=None,
             cache_allowed_BxTxS=None):
    """Inference pass of T new tokens (no dropout) through optional cached keys and values.

    kv: None or (k, v) [num_layers, B, K, S, H]; the new tokens see the cached slots where
    cache_allowed_BxTxS and each other where allowed_BxTxT (causal for AR, any pattern for a
    DLM's block). Returns (logits_BxTxV fp32, (k, v) [num_layers, B, K, T, H] of the new tokens).
    The cache is only read here (writing it is the caller's single update), so a decode loop
    updates it in place instead of copying a layer's slots at every layer."""
    cfg = self.cfg
    attend = dict(positions_BxT=positions_BxT, allowed_BxTxT=allowed_BxTxT,
                  cache_allowed_BxTxS=cache_allowed_BxTxS)
    x_BxTxD = jnp.take(self.embed[...], tokens_BxT, axis=0).astype(cfg.dtype)
    if kv is not None:
      kv = tuple(constrain(c, CACHE_AXES) for c in kv)
    if cfg.scan_layers:
      n = scan_length(cfg)
      per_step = cfg.num_layers // n  # layers per scan step: 1, or a period of moe_every
      graphdef, stacked = nnx.split(self.blocks)
      if kv is not None and per_step > 1:
        kv = tuple(c.reshape(n, per_step, *c.shape[1:]) for c in kv)

      def body(x, layer):
        layer_state, layer_kv = layer
        return nnx.merge(graphdef, layer_state).attend(x, layer_kv, **attend)

      x_BxTxD, new_kv = jax.lax.scan(body, x_BxTxD, (stacked, kv), length=n)
      new_kv = tuple(c.reshape(cfg.num_layers, *c.shape[-4:]) for c in new_kv)
    elif kv is not None:
      # A loop over the layers as the scan does it (lax.switch picks each layer's own block):
      # unrolled, XLA copies the whole loop-carried cache twice around the layers' slices.
      branches = [functools.partial(lambda b, x, layer_kv: b.attend(x, layer_kv, **attend), b)
                  for b in self.blocks]
      x_BxTxD, new_kv = jax.lax.scan(
          lambda x, layer: jax.lax.switch(layer[0], branches, x, layer[1]), x_BxTxD,
          (jnp.arange(cfg.num_layers), kv))
    else:
      kvs = []
      for block in self.blocks:
        x_BxTxD, layer_kv = block.attend(x_BxTxD, None, **attend)
        kvs.append(layer_kv)
      new_kv = tuple(jnp.stack(c) for c in zip(*kvs))
    x_BxTxD = self.final_norm(x_BxTxD)
    w_DxV = self.embed[...].T if cfg.tie_embeddings else self.head[...]
    logits_BxTxV = jnp.einsum("btd,dv->btv", x_BxTxD, w_DxV.astype(cfg.dtype),
                              preferred_element_type=jnp.float32)
    return logits_BxTxV, new_kv

  def extend(self, tokens_BxT, cache: dict, *, fresh: bool = False):
    """Runs T new tokens causally through the KV cache (see Model.init_cache for its layout);
    returns (logits_BxTxV fp32, cache with their keys and values written and index advanced by
    T). fresh: the cache is known to be empty (a prefill), so its slots are not attended."""
    t = tokens_BxT.shape[1]
    index, start_B = cache["index"], cache["start_B"]
    slots_T = index + jnp.arange(t)
    # Left-padded rows: slot s of row b holds position s - start_B[b]; slots before start are pad.
    new_BxTxT = ((slots_T[None, None, :] >= start_B[:, None, None])
                 & (slots_T[None, None, :] <= slots_T[None, :, None]))
    kv, cache_allowed_BxTxS = None, None
    if not fresh:
      kv = (cache["k"], cache["v"])
      keys_S = jnp.arange(cache["k"].shape[3])
      cache_allowed_BxTxS = ((keys_S[None, None, :] >= start_B[:, None, None])
                             & (keys_S[None, None, :] < index)) & jnp.ones((1, t, 1), bool)
    logits_BxTxV, new_kv = self.attend(
        tokens_BxT, positions_BxT=slots_T[None, :] - start_B[:, None], allowed_BxTxT=new_BxTxT,
        kv=kv, cache_allowed_BxTxS=cache_allowed_BxTxS)
    k_NxBxKxSxH, v_NxBxKxSxH = (
        constrain(jax.lax.dynamic_update_slice(cache[name], new.astype(cache[name].dtype),
                                                (0, 0, 0, index, 0)), CACHE_AXES)
        for name, new in zip(("k", "v"), new_kv))
    return logits_BxTxV, dict(cache, k=k_NxBxKxSxH, v=v_NxBxKxSxH, index=index + t)
