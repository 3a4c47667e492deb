"""`model.init_from=PATH`: a run's parameters from a local Hugging Face Qwen3 / Llama / Qwen3-MoE
directory (or a dlmscale export), to continue pre-training it or adapt an AR model into a DLM.

The checkpoint must be exactly the run's network: every tensor the run needs present with the
right shape, no tensor left over, and the config's numerics (RoPE base, norm epsilon, routing)
equal. Each mismatch is one ConfigError naming the tensor or config field and the fix.
"""
from __future__ import annotations

import json

import jax
import numpy as np
from etils import epath

from dlmscale.errors import CheckpointError, ConfigError
from dlmscale.export import hf_config, weights
from dlmscale.optional import require

# ModelConfig field -> the HF config.json key it is read from (for error messages).
HF_KEYS = {"num_layers": "num_hidden_layers", "d_model": "hidden_size",
           "num_heads": "num_attention_heads", "num_kv_heads": "num_key_value_heads",
           "head_dim": "head_dim", "d_ff": "intermediate_size", "vocab_size": "vocab_size",
           "tie_embeddings": "tie_word_embeddings", "rope_base": "rope_theta",
           "norm_eps": "rms_norm_eps", "qk_norm": "model_type", "num_experts": "num_experts",
           "experts_per_token": "num_experts_per_tok", "moe_every": "decoder_sparse_step",
           "moe_d_ff": "moe_intermediate_size", "renormalize_topk": "norm_topk_prob"}


def _weight_files(path: epath.Path) -> list[epath.Path]:
  index = path / "model.safetensors.index.json"
  if index.exists():
    weight_map = json.loads(index.read_text())["weight_map"]
    return [path / f for f in sorted(set(weight_map.values()))]
  single = path / "model.safetensors"
  if single.exists():
    return [single]
  raise CheckpointError(f"{path} has no model.safetensors (or index): model.init_from needs a "
                        "Hugging Face directory saved with safetensors")


def _run_value(cfg, field: str):
  if field == "moe_d_ff":
    return cfg.moe_d_ff or cfg.d_ff
  return getattr(cfg, field)


def check_config(hf: dict, cfg, where: str) -> None:
  """ConfigError naming the first config field where the checkpoint and the run differ."""
  fields = hf_config.model_fields(hf, where)
  if not cfg.num_experts and fields["num_experts"]:
    raise ConfigError(f"{where}: num_experts={fields['num_experts']} but the run is dense: set "
                      "model.num_experts (and its MoE settings) to match")
  all_moe = cfg.num_experts and cfg.moe_every == 1
  for field, value in fields.items():
    if field == "d_ff" and all_moe:
      continue  # no dense layer reads it
    if field in ("tie_embeddings", "vocab_size"):
      continue  # decided by the tensors (a tied checkpoint may start an untied head)
    mine = _run_value(cfg, field)
    same = (abs(float(mine) - float(value)) <= 1e-9 * max(1.0, abs(float(value)))
            if isinstance(value, float) else mine == value)
    if not same:
      raise ConfigError(f"{where}: {HF_KEYS[field]} gives {field}={value!r} but the run has "
                        f"model.{field}={mine!r}: set model.{field}={value!r} to match the "
                        "checkpoint")
  if cfg.num_experts and (cfg.router != "softmax" or cfg.num_shared_experts):
    raise ConfigError(f"{where}: the checkpoint routes by softmax without shared experts; set "
                      "model.router='softmax' and model.num_shared_experts=0")


def load_hf_params(path: str, model) -> dict:
  """The run's params pytree (numpy, the model's param dtypes) read from an HF directory."""
  root = epath.Path(path)
  where = f"model.init_from={path}"
  if not (root / "config.json").exists():
    raise CheckpointError(f"{where}: no config.json there: point model.init_from at a local "
                          "Hugging Face model directory")
  hf = json.loads((root / "config.json").read_text())
  hf_config.model_fields(hf, where)  # a layout dlmscale has at all (model type, RoPE, biases)
  safetensors = require("safetensors", "hf_export", "model.init_from (reading safetensors)")
  handles = [safetensors.safe_open(str(f), framework="flax") for f in _weight_files(root)]
  owner = {name: h for h in handles for name in h.keys()}
  cfg = model.cfg
  used = set()

  def read(name: str):
    if name == "lm_head.weight" and name not in owner and hf.get("tie_word_embeddings"):
      name = "model.embed_tokens.weight"  # a tied checkpoint starts the run's own head
    if name not in owner:
      return None
    used.add(name)
    return np.asarray(jax.device_get(owner[name].get_tensor(name)), np.float32)

  params = weights.from_hf(read, cfg, model.abstract_params, where)
  extra = set(owner) - used
  if hf.get("tie_word_embeddings") and cfg.tie_embeddings:
    extra.discard("lm_head.weight")  # some tied checkpoints also store the (equal) head
  extra = sorted(extra)
  if extra:
    hint = ("set model.tie_embeddings=False" if extra[0] == "lm_head.weight"
            else "match model.qk_norm and the layer layout to the checkpoint")
    raise ConfigError(f"{where}: tensor {extra[0]} has no place in the run's model: {hint}")
  # Shapes matched; what they cannot show (head split, RoPE base, eps, routing) is compared here.
  check_config(hf, cfg, where)
  return params
