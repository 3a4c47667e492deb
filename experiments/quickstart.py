"""Quickstart: AR vs masked diffusion (MDM) on the same repeated token stream, on 2 CPU cores.

Corpus: the Python standard library of the running interpreter, byte-level tokens, with held-out
validation files. U = 600k unique tokens repeated for 5 epochs (T = 3M). Both models share shape,
optimizer and stream; only the objective differs.
"""
from configs import models, optimizers
from configs.studies import no_argument
from dlmscale.config import default_config


def get_config(arg=None):
  no_argument("quickstart", arg, "change keys with --config.KEY=VALUE (e.g. "
              "--config.objectives=mdm), or run a study, e.g. "
              "--config=experiments/crossover.py:unique=0.5B,objective=mdm,scale=cpu")
  c = default_config()
  c.objectives = ("ar", "mdm")
  c.model.update(models.TINY)
  c.data.update(split_unit="directory", seq_len=128, unique_tokens=600_000, total_tokens=3_000_000)
  c.train.update(optimizers.CPU_FAST)
  c.train.update(global_batch=32, log_every=50, checkpoint_every=250)
  c.eval.update(batch_size=64, mask_samples=8, max_sequences=256)
  return c
