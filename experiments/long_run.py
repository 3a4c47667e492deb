"""Long run (PAPER.md "Experiments", second row; the paper's ">56% HellaSwag, >33% MMLU from 1B
unique tokens"): the 1B model on 1B unique tokens repeated for 480 epochs (480B tokens), AR vs
masked diffusion; AR's validation loss climbs far while the DLM keeps improving downstream.

Arguments: objective=ar|mdm, scale=paper|gpu|cpu (default: objective=ar,scale=paper); 2 runs a
scale. The unique budget is the crossover study's unique=1B, so its first 96 epochs follow that
run's stream.

  python -m dlmscale.main --config=experiments/long_run.py:objective=mdm,scale=cpu \
      --workdir=runs/long_run-cpu-mdm

Scales (configs/studies.py):
| scale | model | total T | unique U | batch x seq | steps |
|---|---|---:|---:|---|---:|
| paper | models.PAPER_1B | 480B | 1B | 256 x 2048 | 915,527 |
| gpu | models.GPU_17M | 94,371,840 | 196,608 | 32 x 512 | 5,760 |
| cpu | models.TINY | 15,728,640 | 32,768 | 32 x 128 | 3,840 |
At paper scale 480 per-epoch evaluations are too many: validation runs every 1/200 of the run
(every ~2.4 epochs). A cpu run is 5x the crossover's tokens: ~13 minutes on 2 cores.
"""
from configs import studies

NAME = "long_run"
SCALES = studies.SCALES  # what a sweep may ask runs() for
UNIQUE, TOTAL = 1, 480  # paper billions of tokens
CHOICES = {"objective": studies.OBJECTIVES, "scale": studies.SCALES}


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES)
  scale = a["scale"]
  return studies.study_config(scale, a["objective"], model=studies.MODEL_1B[scale],
                              unique_tokens=studies.tokens(scale, UNIQUE),
                              total_tokens=studies.tokens(scale, TOTAL))


def runs(scale="paper"):
  studies.check_scale(NAME, scale)
  return [studies.run_arg(objective=o, scale=scale) for o in studies.OBJECTIVES]
