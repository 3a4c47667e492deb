"""Crossover vs unique data, the paper's central study (PAPER.md "Experiments", first row): a 1B
model trained on 96B tokens drawn from 0.5B / 1B / 1.5B / 10B / 96B unique tokens (192 / 96 / 64 /
9.6 / 1 epochs), AR vs masked diffusion. The DLM overtakes AR the earlier, the less unique data.

Arguments: unique=0.5B|1B|1.5B|10B|96B, objective=ar|mdm, scale=paper|gpu|cpu (default: the
first of each: unique=0.5B,objective=ar,scale=paper); runs(scale) lists the 10 runs of a scale.

  python -m dlmscale.main --config=experiments/crossover.py:unique=0.5B,objective=mdm,scale=cpu \
      --workdir=runs/crossover-cpu-0.5B-mdm

Scales (configs/studies.py; every budget keeps the paper's epochs):
| scale | model | total T | unique U, 0.5B ... 96B | batch x seq | steps |
|---|---|---:|---|---|---:|
| paper | models.PAPER_1B (1.09B) | 96B | 0.5B ... 96B | 256 x 2048 | 183,105 |
| gpu | models.GPU_17M | 18,874,368 | 98,304 ... 18,874,368 | 32 x 512 | 1,152 |
| cpu | models.TINY (127k) | 3,145,728 | 16,384 ... 3,145,728 | 32 x 128 | 768 |
Data: C4 with GPT-2 tokens (paper), configs/prepare_nl.py's corpus (gpu), the stdlib as bytes
(cpu). A cpu run takes ~3 minutes on 2 cores.
"""
from configs import studies

NAME = "crossover"
SCALES = studies.SCALES  # what a sweep may ask runs() for
UNIQUE = ("0.5B", "1B", "1.5B", "10B", "96B")
TOTAL = 96  # paper billions of tokens
CHOICES = {"unique": UNIQUE, "objective": studies.OBJECTIVES, "scale": studies.SCALES}


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES)
  scale = a["scale"]
  return studies.study_config(
      scale, a["objective"], model=studies.MODEL_1B[scale],
      unique_tokens=studies.tokens(scale, studies.billions(a["unique"])),
      total_tokens=studies.tokens(scale, TOTAL))


def runs(scale="paper"):
  studies.check_scale(NAME, scale)
  return [studies.run_arg(unique=u, objective=o, scale=scale)
          for u in UNIQUE for o in studies.OBJECTIVES]
