"""FLOPs accounting and model FLOPs utilisation (MFU)."""
from __future__ import annotations

import jax

from dlmscale.models.transformer import ModelConfig, is_moe_layer

# Dense bf16 peak FLOP/s per chip, by jax device_kind prefix.
PEAK_FLOPS = {
    "TPU v4": 275e12,
    "TPU v5 lite": 197e12,
    "TPU v5e": 197e12,
    "TPU v5p": 459e12,
    "TPU v5": 459e12,
    "TPU v6 lite": 918e12,
    "TPU v6e": 918e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100": 312e12,
}


def matmul_params(cfg: ModelConfig) -> int:
  """Parameters that take part in a matmul per token (the embedding lookup does not; the head does).

  MoE layers count what one token uses: its top-k routed experts, the shared experts and the
  router, not the idle experts (so 6N stays the compute of a step, not of all parameters)."""
  attn = cfg.d_model * cfg.head_dim * (2 * cfg.num_heads + 2 * cfg.num_kv_heads)
  mlp = 3 * cfg.d_model * cfg.d_ff
  moe_layers = sum(is_moe_layer(cfg, i) for i in range(cfg.num_layers))
  moe = 0
  if moe_layers:
    expert = 3 * cfg.d_model * (cfg.moe_d_ff or cfg.d_ff)
    moe = ((cfg.experts_per_token + cfg.num_shared_experts) * expert
           + cfg.d_model * cfg.num_experts)
  return (cfg.num_layers * attn + (cfg.num_layers - moe_layers) * mlp + moe_layers * moe
          + cfg.d_model * cfg.vocab_size)


def train_flops_per_token(cfg: ModelConfig, seq_len: int, causal: bool = False) -> float:
  """6 N (forward + backward matmuls) plus attention scores and values: over the full sequence
  (bidirectional, a DLM), or half of it when `causal` (an AR model's mask skips the upper half)."""
  attention = 12 * cfg.num_layers * cfg.num_heads * cfg.head_dim * seq_len
  return 6.0 * matmul_params(cfg) + (attention / 2 if causal else attention)


def peak_flops_per_device(override: float = 0.0) -> float | None:
  """The configured peak, else the chip's from the table; None when unknown (CPU)."""
  if override:
    return float(override)
  kind = jax.devices()[0].device_kind
  for prefix in sorted(PEAK_FLOPS, key=len, reverse=True):
    if kind.startswith(prefix):
      return PEAK_FLOPS[prefix]
  return None


def mfu(tokens_per_s: float, flops_per_token: float, peak_per_device: float | None) -> float | None:
  if not peak_per_device:
    return None
  return tokens_per_s * flops_per_token / (peak_per_device * jax.device_count())
