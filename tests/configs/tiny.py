"""Tiny end-to-end test config: TINY model, 32-token sequences, 16 steps of 16 sequences.

Checkpoints every 4 steps and logs every 2, so kill/resume tests can stop between checkpoints.
Used in-process (loaded with importlib, repo root on sys.path) and by the CLI tests
(`python -m dlmscale.main --config=tests/configs/tiny.py`, run from the repo root).
"""
from configs import models
from dlmscale.config import default_config

SEQ_LEN = 32
GLOBAL_BATCH = 16
NUM_STEPS = 16


def get_config():
  c = default_config()
  c.objectives = ("ar", "mdm")
  c.model.update(models.TINY)
  c.data.update(split_unit="directory", seq_len=SEQ_LEN, unique_tokens=20_000,
                total_tokens=NUM_STEPS * GLOBAL_BATCH * SEQ_LEN)
  c.train.update(global_batch=GLOBAL_BATCH, lr=3e-3, warmup_steps=2, log_every=2,
                 checkpoint_every=4)
  c.eval.update(batch_size=32, mask_samples=2, max_sequences=32)
  return c
