"""The recipe shared by the sparse study's experiments (dense 1B, MoE 8B1A, dense 8B).

Sequence 2048, AdamW + WSD (optimizers.PAPER), bf16 compute over fp32 params, full remat, the
English corpus of configs/prepare_nl.py, the model-size study's budget (1B unique tokens x 96).
"""
from configs import optimizers, prepare_nl
from dlmscale.config import default_config

SEQ_LEN = 2048
UNIQUE_TOKENS = 1_000_000_000
TOTAL_TOKENS = 96_000_000_000


def study_config(model: dict, global_batch: int, mesh: dict):
  """A full run config for one model of the study."""
  c = default_config()
  c.objectives = ("ar", "mdm")
  c.model.update(model)
  c.model.update(dtype="bfloat16", param_dtype="float32", remat="full")
  c.data.update(prepare_nl.get_config().data)
  c.data.update(seq_len=SEQ_LEN, unique_tokens=UNIQUE_TOKENS, total_tokens=TOTAL_TOKENS)
  c.train.update(optimizers.PAPER)
  c.train.update(global_batch=global_batch, log_every=100, checkpoint_every=1000)
  c.mesh.update(mesh)
  return c
