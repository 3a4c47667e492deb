"""Parameter noise (PAPER.md "Experiments", seventh row): AR with dropout (objective ar_dropout,
on attention, residual and MLP activations) at rates 0.1 to 0.9, against plain AR and masked
diffusion. Dropout helps AR under data constraint but does not close the gap.

Arguments: objective=ar_dropout|ar|mdm, rate=0.1|0.3|0.5|0.7|0.9 (only with ar_dropout),
scale=paper|gpu|cpu (default: objective=ar_dropout,rate=0.1,scale=paper); 7 runs a scale (five
rates, ar, mdm). PAPER.md gives the range "0.1 ... 0.9"; we take the input-noise study's five
steps so the two noise studies line up.

  python -m dlmscale.main --config=experiments/dropout.py:objective=ar_dropout,rate=0.3,scale=cpu \
      --workdir=runs/dropout-cpu-0.3

Budget, model, data, batch and steps as experiments/input_noise.py (1B unique x 96 epochs; the ar
and mdm runs are the crossover study's unique=1B runs). A cpu run takes ~3 minutes (dropout
costs ~30% more per step on CPU).
"""
from configs import studies

NAME = "dropout"
SCALES = studies.SCALES  # what a sweep may ask runs() for
NOISY = "ar_dropout"
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
