"""Writes a Hugging Face model directory from a dlmscale network, its parameters and tokenizer.

AR: config.json for Qwen3ForCausalLM / LlamaForCausalLM / Qwen3MoeForCausalLM, safetensors,
generation_config.json, tokenizer files. DLM: the same weights with a `dlmscale_mdm` config and
modeling_dlmscale.py (load with trust_remote_code=True).
"""
from __future__ import annotations

import json

from etils import epath

from dlmscale.errors import ConfigError
from dlmscale.export import dlm_modeling, hf_config, tokenizer, weights
from dlmscale.optional import require
from dlmscale.progress import Progress

SHARD_BYTES = 4 * 2**30  # safetensors files up to this size; more get an index
KINDS = ("ar", "dlm")


def _safetensors():
  return require("safetensors.numpy", "hf_export", "exporting to Hugging Face")


def _shards(tensors: dict, max_bytes: int) -> list[dict]:
  """Tensors in name order, cut into groups of at most max_bytes (a bigger tensor alone)."""
  groups, size = [{}], 0
  for name in sorted(tensors):
    nbytes = tensors[name].nbytes
    if groups[-1] and size + nbytes > max_bytes:
      groups.append({})
      size = 0
    groups[-1][name] = tensors[name]
    size += nbytes
  return groups


def write_weights(tensors: dict, out: epath.Path, max_shard_bytes: int = SHARD_BYTES) -> list[str]:
  """model.safetensors, or model-0000i-of-0000n.safetensors + model.safetensors.index.json."""
  st = _safetensors()
  groups = _shards(tensors, max_shard_bytes)
  if len(groups) == 1:
    names = ["model.safetensors"]
  else:
    names = [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    index = {"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
             "weight_map": {n: f for f, g in zip(names, groups) for n in g}}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
  mb = lambda group: sum(t.nbytes for t in group.values()) / 2**20
  with Progress("export weights", total=round(sum(mb(g) for g in groups)), unit="MB",
                enabled=True) as bar:
    for name, group in zip(names, groups):
      (out / name).write_bytes(st.save(group, metadata={"format": "pt"}))
      bar.update(round(mb(group)))
    bar.summary = f"{len(names)} file(s) in {out}"
  return names


def export_model(model_cfg, params, tok, kind: str, out: str, *, seq_len: int,
                 max_shard_bytes: int = SHARD_BYTES) -> dict:
  """Writes the HF directory `out`; returns {'out', 'architecture', 'files'}. ConfigError (one
  line) for a layout transformers cannot express or a kind other than 'ar' / 'dlm'."""
  if kind not in KINDS:
    raise ConfigError(f"unknown model kind {kind!r}: export takes {list(KINDS)}")
  config = hf_config.hf_config(model_cfg, kind, eod_id=tok.eod_id, mask_id=tok.mask_id,
                               tokenizer_vocab=tok.vocab_size, seq_len=seq_len)
  files = tokenizer.tokenizer_files(tok, seq_len)  # fails early on an unexportable tokenizer
  path = epath.Path(out)
  path.mkdir(parents=True, exist_ok=True)
  # Never produced: the mask id and the padding ids between the tokenizer's and the model's vocab.
  banned = [tok.mask_id, *range(tok.vocab_size, model_cfg.vocab_size)]
  generation = {"eos_token_id": tok.eod_id, "pad_token_id": tok.eod_id, "bos_token_id": None}
  if kind == "ar":
    generation["suppress_tokens"] = banned
  else:
    generation["mask_token_id"] = tok.mask_id
    files[dlm_modeling.FILE_NAME] = dlm_modeling.SOURCE
  files["config.json"] = json.dumps(config, indent=1)
  files["generation_config.json"] = json.dumps(generation, indent=1)
  for name, text in files.items():
    (path / name).write_text(text)
  names = write_weights(weights.to_hf(params, model_cfg), path, max_shard_bytes)
  return {"out": str(path), "architecture": config["architectures"][0],
          "files": sorted(list(files) + names)}


def export_loaded(lm, out: str, **kw) -> dict:
  """export_model for a LoadedModel (dlmscale.experiment.load_model's checkpoint)."""
  return export_model(lm.model.cfg, lm.params, lm.tokenizer, lm.kind, out, seq_len=lm.seq_len,
                      **kw)
