"""Mixture-of-experts feed-forward: a top-k router over SwiGLU experts, optional shared expert.

The dispatch implementations compute the same function (up to dropped tokens):
- "dropless": token-expert assignments are sorted by expert and the experts run as grouped
  matmuls (`jax.lax.ragged_dot`; on CPU whole blocks per expert, models/grouped_matmul.py); no
  token is ever dropped.
- "capacity": GShard-style one-hot dispatch/combine einsums. Tokens are grouped per sequence
  (one batch row = one group, so the einsums shard along the batch like the rest of the network);
  each expert takes at most C = ceil(capacity_factor * L * k / E) assignments per group, top-1
  choices before top-2 ones and earlier tokens first; the rest are dropped and counted.
- "dropless_a2a" / "dropless_gather": the dropless function built for TPU, per-chip grouped
  matmuls (Pallas megablox on TPU) under shard_map, with a token all-to-all over the expert axis
  or the expert weights gathered per layer (moe_tpu.py).

Aux terms (all fp32 scalars unless noted):
- load_balance_loss = E * sum_e f_e * p_e, with f_e the fraction of the T*k assignments routed to
  expert e (before any drop) and p_e the mean router probability of e. Both sum to 1, so the loss
  is exactly 1 whenever the router's probabilities are uniform (p_e = 1/E) or the load is uniform
  (f_e = 1/E), for any k; it grows above 1 as the router concentrates tokens on favoured experts.
  (This is Switch's loss with f normalised over assignments, so its balanced value does not
  depend on k.) For the sigmoid router, p is the scores normalised to sum to 1 per token.
- z_loss = mean over tokens of logsumexp(router logits)^2.
- aux_loss = load_balance_coef * load_balance_loss + router_z_coef * z_loss (added to the loss).
- expert_load [E]: f_e; drop_fraction: dropped assignments / (T*k) (always 0 for dropless).
"""
from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx

from dlmscale.models import moe_tpu
from dlmscale.models.grouped_matmul import grouped_matmul
from dlmscale.models.layers import SwiGLU, dropout, param
from dlmscale.parallel import constrain

ROUTERS = ("softmax", "sigmoid")
DISPATCHES = ("dropless", "capacity", *moe_tpu.TPU_DISPATCHES)


def router_aux(logits_TxE, scores_TxE, experts_TxK, router: str):
  """(load_balance_loss, z_loss, expert_load_E) from fp32 router logits and chosen experts."""
  e = logits_TxE.shape[-1]
  assigned_TxKxE = jax.nn.one_hot(experts_TxK, e, dtype=jnp.float32)
  load_E = assigned_TxKxE.sum((0, 1)) / (experts_TxK.shape[0] * experts_TxK.shape[1])
  if router == "sigmoid":  # sigmoid scores need not sum to 1; balance on their shares
    probs_TxE = scores_TxE / jnp.maximum(scores_TxE.sum(-1, keepdims=True), 1e-9)
  else:
    probs_TxE = scores_TxE
  balance = e * jnp.sum(load_E * probs_TxE.mean(0))
  z = jnp.mean(jax.nn.logsumexp(logits_TxE, axis=-1) ** 2)
  return balance, z, load_E


def capacity(capacity_factor: float, group_tokens: int, k: int, num_experts: int) -> int:
  """Per-expert slots per group of `group_tokens` tokens."""
  return max(1, math.ceil(capacity_factor * group_tokens * k / num_experts))


class MoE(nnx.Module):
  """Routed SwiGLU experts (stacked weights [E, D, F] / [E, F, D]) plus optional shared experts."""

  def __init__(self, cfg, key):
    e, d, pd, std = cfg.num_experts, cfg.d_model, cfg.param_dtype, cfg.init_std
    f = cfg.moe_d_ff or cfg.d_ff
    kr, kg, ku, kd, ks = jax.random.split(key, 5)
    self.cfg = cfg
    # The router is tiny and read by every token: keep it replicated over the expert axis.
    self.router = param(kr, (d, e), ("embed", None), std=std, dtype=pd)
    self.w_gate = param(kg, (e, d, f), ("expert", "embed", "mlp"), std=std, dtype=pd)
    self.w_up = param(ku, (e, d, f), ("expert", "embed", "mlp"), std=std, dtype=pd)
    self.w_down = param(kd, (e, f, d), ("expert", "mlp", "embed"), std=std, dtype=pd)
    if cfg.num_shared_experts:
      # n shared SwiGLU experts of width F that every token uses == one SwiGLU of width n * F.
      self.shared = SwiGLU(dataclasses.replace(cfg, d_ff=cfg.num_shared_experts * f), ks)

  def route(self, x_TxD):
    """fp32 (logits_TxE, scores_TxE, weights_TxK, experts_TxK)."""
    cfg = self.cfg
    logits_TxE = jnp.einsum("td,de->te", x_TxD.astype(jnp.float32),
                            self.router[...].astype(jnp.float32))
    if cfg.router == "sigmoid":
      scores_TxE = jax.nn.sigmoid(logits_TxE)
    else:
      scores_TxE = jax.nn.softmax(logits_TxE, axis=-1)
    weights_TxK, experts_TxK = jax.lax.top_k(scores_TxE, cfg.experts_per_token)
    if cfg.renormalize_topk:
      weights_TxK = weights_TxK / jnp.maximum(weights_TxK.sum(-1, keepdims=True), 1e-9)
    return logits_TxE, scores_TxE, weights_TxK, experts_TxK

  def _dropless(self, x_TxD, weights_TxK, experts_TxK, dropout_rate, key):
    t, d = x_TxD.shape
    k, e, dt = experts_TxK.shape[1], self.cfg.num_experts, x_TxD.dtype
    experts_N = experts_TxK.reshape(-1)  # N = T * k assignments, token-major
    order_N = jnp.argsort(experts_N, stable=True)
    x_NxD = jnp.take(x_TxD, order_N // k, axis=0)
    sizes_E = jnp.bincount(experts_N, length=e).astype(jnp.int32)
    gate_NxF = grouped_matmul(x_NxD, self.w_gate[...].astype(dt), sizes_E)
    up_NxF = grouped_matmul(x_NxD, self.w_up[...].astype(dt), sizes_E)
    h_NxF = dropout(jax.nn.silu(gate_NxF) * up_NxF, dropout_rate, key)
    y_NxD = grouped_matmul(h_NxF, self.w_down[...].astype(dt), sizes_E)
    y_TxKxD = jnp.take(y_NxD, jnp.argsort(order_N), axis=0).reshape(t, k, d)
    y_TxD = jnp.einsum("tkd,tk->td", y_TxKxD, weights_TxK.astype(dt))
    return y_TxD, jnp.zeros((), jnp.float32)

  def _capacity(self, x_GxSxD, weights_GxSxK, experts_GxSxK, dropout_rate, key):
    cfg, dt = self.cfg, x_GxSxD.dtype
    g, s, k = experts_GxSxK.shape
    e = cfg.num_experts
    c = capacity(cfg.capacity_factor, s, k, e)
    # Slot order within a group: all top-1 choices first, then top-2, ..., each in token order.
    onehot_GxKxSxE = jax.nn.one_hot(experts_GxSxK.transpose(0, 2, 1), e, dtype=jnp.int32)
    flat_GxKSxE = onehot_GxKxSxE.reshape(g, k * s, e)
    slot_GxKSxE = jnp.cumsum(flat_GxKSxE, axis=1) - 1
    kept_GxKSxE = flat_GxKSxE * (slot_GxKSxE < c)
    dropped = 1.0 - kept_GxKSxE.sum() / (g * s * k)
    # A token's k choices are distinct experts, so summing over k never collides.
    disp_GxKxSxExC = (kept_GxKSxE[..., None] * jax.nn.one_hot(slot_GxKSxE, c, dtype=jnp.int32)
                      ).reshape(g, k, s, e, c).astype(dt)
    dispatch_GxSxExC = disp_GxKxSxExC.sum(1)
    combine_GxSxExC = jnp.einsum("gksec,gsk->gsec", disp_GxKxSxExC, weights_GxSxK.astype(dt))
    # Expert parallelism: each chip computes its own experts for every group (no expert weights
    # move); training pins these layouts (parallel.activation_sharding), XLA adds the all-to-alls.
    x_GxExCxD = constrain(jnp.einsum("gsec,gsd->gecd", dispatch_GxSxExC, x_GxSxD),
                          ("expert_batch", "expert", None, None))
    gate = jnp.einsum("gecd,edf->gecf", x_GxExCxD, self.w_gate[...].astype(dt))
    up = jnp.einsum("gecd,edf->gecf", x_GxExCxD, self.w_up[...].astype(dt))
    h_GxExCxF = dropout(jax.nn.silu(gate) * up, dropout_rate, key)
    y_GxExCxD = constrain(jnp.einsum("gecf,efd->gecd", h_GxExCxF, self.w_down[...].astype(dt)),
                          ("expert_batch", "expert", None, None))
    return jnp.einsum("gsec,gecd->gsd", combine_GxSxExC, y_GxExCxD), dropped.astype(jnp.float32)

  def __call__(self, x_BxLxD, *, dropout_rate=0.0, key=None):
    """Returns (y_BxLxD, aux) with aux keys aux_loss, load_balance_loss, z_loss, drop_fraction,
    expert_load [E] (see the module docstring)."""
    cfg = self.cfg
    b, l, d = x_BxLxD.shape
    k_routed, k_shared = jax.random.split(key) if key is not None else (None, None)
    x_TxD = x_BxLxD.reshape(b * l, d)
    logits_TxE, scores_TxE, weights_TxK, experts_TxK = self.route(x_TxD)
    if cfg.moe_dispatch == "capacity":
      kk = experts_TxK.shape[1]
      y, dropped = self._capacity(x_BxLxD, weights_TxK.reshape(b, l, kk),
                                  experts_TxK.reshape(b, l, kk), dropout_rate, k_routed)
      y_BxLxD = y.reshape(b, l, d)
    elif cfg.moe_dispatch in moe_tpu.TPU_DISPATCHES:
      y = moe_tpu.dispatch(cfg.moe_dispatch, x_TxD, weights_TxK, experts_TxK, self.w_gate[...],
                           self.w_up[...], self.w_down[...], dropout_rate=dropout_rate,
                           key=k_routed)
      y_BxLxD, dropped = y.reshape(b, l, d), jnp.zeros((), jnp.float32)
    else:
      y, dropped = self._dropless(x_TxD, weights_TxK, experts_TxK, dropout_rate, k_routed)
      y_BxLxD = y.reshape(b, l, d)
    if cfg.num_shared_experts:
      y_BxLxD = y_BxLxD + self.shared(x_BxLxD, dropout_rate=dropout_rate, key=k_shared)
    balance, z, load_E = router_aux(logits_TxE, scores_TxE, experts_TxK, cfg.router)
    aux = {"aux_loss": cfg.load_balance_coef * balance + cfg.router_z_coef * z,
           "load_balance_loss": balance, "z_loss": z, "drop_fraction": dropped,
           "expert_load": load_E}
    return y_BxLxD, aux
