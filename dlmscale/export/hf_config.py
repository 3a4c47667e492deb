"""config.json of an exported network, and the ModelConfig fields an HF config.json implies.

AR networks map onto stock transformers classes: Qwen3ForCausalLM (dense, q/k norms),
LlamaForCausalLM (dense, no q/k norms) and Qwen3MoeForCausalLM (softmax top-k experts). DLM
networks use the same weights under `dlmscale_mdm`, served by the exported modeling file.
"""
from __future__ import annotations

from dlmscale.errors import ConfigError

DLM_MODEL_TYPE = "dlmscale_mdm"
DLM_ARCHITECTURE = "DlmscaleForMaskedDiffusion"
DLM_MODULE = "modeling_dlmscale"  # <out>/modeling_dlmscale.py, loaded with trust_remote_code
# The HF model types import reads, and whether their layers carry q/k norms.
IMPORTABLE = {"qwen3": True, "qwen3_moe": True, "llama": False, DLM_MODEL_TYPE: None}


def export_problem(cfg) -> str | None:
  """Why transformers cannot run this network as dlmscale does (one line), or None."""
  if not cfg.num_experts:
    return None
  if cfg.router != "softmax":
    return (f"model.router={cfg.router!r} cannot be exported: Qwen3-MoE routes by a softmax over "
            "the experts")
  if cfg.num_shared_experts:
    return (f"model.num_shared_experts={cfg.num_shared_experts} cannot be exported: Qwen3-MoE "
            "has no shared experts")
  if cfg.moe_dispatch != "dropless":
    return ("model.moe_dispatch='capacity' cannot be exported: it drops tokens over capacity and "
            "transformers' Qwen3-MoE is dropless, so the logits would differ")
  if not cfg.qk_norm:
    return "model.qk_norm=False with experts cannot be exported: Qwen3-MoE always norms q and k"
  return None


def architecture(cfg, kind: str) -> tuple[str, str]:
  """(model_type, architecture class) for a network of this config and kind ('ar' or 'dlm')."""
  if kind == "dlm":
    return DLM_MODEL_TYPE, DLM_ARCHITECTURE
  if cfg.num_experts:
    return "qwen3_moe", "Qwen3MoeForCausalLM"
  return ("qwen3", "Qwen3ForCausalLM") if cfg.qk_norm else ("llama", "LlamaForCausalLM")


def hf_config(cfg, kind: str, *, eod_id: int, mask_id: int, tokenizer_vocab: int,
              seq_len: int) -> dict:
  """The config.json dict; ConfigError (export_problem) when the layout cannot be expressed."""
  problem = export_problem(cfg)
  if problem:
    raise ConfigError(problem)
  model_type, arch = architecture(cfg, kind)
  out = {
      "architectures": [arch], "model_type": model_type, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim, "hidden_act": "silu",
      "max_position_embeddings": seq_len, "rms_norm_eps": cfg.norm_eps,
      # transformers 4 reads rope_theta, 5 rope_parameters.
      "rope_theta": cfg.rope_base,
      "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_base},
      "tie_word_embeddings": cfg.tie_embeddings, "attention_bias": False,
      "attention_dropout": 0.0, "initializer_range": cfg.init_std, "use_cache": kind == "ar",
      "bos_token_id": None, "eos_token_id": eod_id, "pad_token_id": eod_id,
      "dtype": "float32",
  }
  if model_type in ("qwen3", "qwen3_moe"):
    out.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.num_layers)
  if model_type == "llama":
    out.update(mlp_bias=False, pretraining_tp=1)
  if cfg.num_experts:
    # Qwen3-MoE's layer i is sparse when (i + 1) % decoder_sparse_step == 0: dlmscale's moe_every.
    out.update(num_experts=cfg.num_experts, num_experts_per_tok=cfg.experts_per_token,
               moe_intermediate_size=cfg.moe_d_ff or cfg.d_ff, decoder_sparse_step=cfg.moe_every,
               norm_topk_prob=cfg.renormalize_topk, mlp_only_layers=[],
               output_router_logits=False, router_aux_loss_coef=cfg.load_balance_coef)
  if kind == "dlm":
    out.update(qk_norm=cfg.qk_norm, mask_token_id=mask_id, tokenizer_vocab_size=tokenizer_vocab,
               auto_map={"AutoConfig": f"{DLM_MODULE}.DlmscaleMdmConfig",
                         "AutoModel": f"{DLM_MODULE}.{DLM_ARCHITECTURE}",
                         "AutoModelForMaskedLM": f"{DLM_MODULE}.{DLM_ARCHITECTURE}"})
  return out


def model_fields(hf: dict, where: str) -> dict:
  """The ModelConfig fields an HF config.json fixes (shapes and numerics); `where` names it."""
  model_type = hf.get("model_type")
  if model_type not in IMPORTABLE:
    raise ConfigError(f"{where}: model_type {model_type!r} is not a Qwen3/Llama layout: import "
                      f"reads {sorted(IMPORTABLE)}")
  rope = hf.get("rope_parameters") or hf.get("rope_scaling") or {}
  if rope.get("rope_type", rope.get("type", "default")) != "default":
    raise ConfigError(f"{where}: rope type {rope.get('rope_type', rope.get('type'))!r} is not "
                      "plain RoPE, which is all dlmscale implements")
  for flag in ("attention_bias", "mlp_bias"):
    if hf.get(flag):
      raise ConfigError(f"{where}: {flag}=true, but dlmscale's layers have no biases")
  if hf.get("hidden_act", "silu") != "silu":
    raise ConfigError(f"{where}: hidden_act={hf['hidden_act']!r}; dlmscale's MLP is SwiGLU (silu)")
  qk_norm = IMPORTABLE[model_type]
  fields = dict(
      num_layers=hf["num_hidden_layers"], d_model=hf["hidden_size"],
      num_heads=hf["num_attention_heads"],
      num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
      head_dim=hf.get("head_dim") or hf["hidden_size"] // hf["num_attention_heads"],
      d_ff=hf["intermediate_size"], vocab_size=hf["vocab_size"],
      tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      rope_base=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
      qk_norm=hf.get("qk_norm", True) if qk_norm is None else qk_norm,
      num_experts=hf.get("num_experts", 0) or 0)
  if fields["num_experts"]:
    if hf.get("mlp_only_layers"):
      raise ConfigError(f"{where}: mlp_only_layers={hf['mlp_only_layers']} has no dlmscale "
                        "equivalent (dense layers come only as every moe_every-th)")
    fields.update(experts_per_token=hf["num_experts_per_tok"],
                  moe_every=hf.get("decoder_sparse_step", 1),
                  moe_d_ff=hf.get("moe_intermediate_size", 0),
                  renormalize_topk=bool(hf.get("norm_topk_prob", False)))
  return fields
