"""Input noise (PAPER.md "Experiments", sixth row): AR with 10 / 30 / 50 / 70 / 90% of its input
tokens replaced by the mask token (objective ar_input_mask; targets stay clean), against plain AR
and masked diffusion. Input noise helps AR under data constraint but does not close the gap.

Arguments: objective=ar_input_mask|ar|mdm, rate=0.1|0.3|0.5|0.7|0.9 (only with ar_input_mask),
scale=paper|gpu|cpu (default: objective=ar_input_mask,rate=0.1,scale=paper); 7 runs a scale
(five rates, ar, mdm).

  python -m dlmscale.main \
      --config=experiments/input_noise.py:objective=ar_input_mask,rate=0.5,scale=cpu \
      --workdir=runs/input_noise-cpu-0.5

Budget: the paper runs its noise studies on the 1B model under data constraint; ours is 1B unique
tokens x 96 epochs, the budget of the model-size and sparse studies, so the ar and mdm runs here
are the crossover study's unique=1B runs (same config, same stream). Model, data, batch and
steps as experiments/crossover.py at unique=1B: PAPER_1B / GPU_17M / TINY, T = 96B / 18,874,368 /
3,145,728 tokens, U = 1B / 196,608 / 32,768 (paper / gpu / cpu). A cpu run takes ~3 minutes.
"""
from configs import studies

NAME = "input_noise"
SCALES = studies.SCALES  # what a sweep may ask runs() for
NOISY = "ar_input_mask"
RATES = ("0.1", "0.3", "0.5", "0.7", "0.9")
UNIQUE, TOTAL = 1, 96  # paper billions of tokens
CHOICES = {"objective": (NOISY,) + studies.OBJECTIVES, "rate": RATES, "scale": studies.SCALES}


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES, only_with={"rate": ("objective", NOISY)})
  scale, objective = a["scale"], a["objective"]
  return studies.study_config(scale, objective, model=studies.MODEL_1B[scale],
                              unique_tokens=studies.tokens(scale, UNIQUE),
                              total_tokens=studies.tokens(scale, TOTAL),
                              rate=a["rate"] if objective == NOISY else None)


def runs(scale="paper"):
  studies.check_scale(NAME, scale)
  return ([studies.run_arg(objective=NOISY, rate=r, scale=scale) for r in RATES]
          + [studies.run_arg(objective=o, scale=scale) for o in studies.OBJECTIVES])
