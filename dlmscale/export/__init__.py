"""Hugging Face export: a dlmscale checkpoint as a transformers model directory.

AR networks load with AutoModelForCausalLM (Qwen3 / Llama / Qwen3-MoE), DLM networks with
AutoModelForMaskedLM(trust_remote_code=True). dlmscale.hf_import reads such directories back.
"""
from dlmscale.export.export import export_loaded, export_model
from dlmscale.export.hf_config import export_problem

__all__ = ["export_loaded", "export_model", "export_problem"]
