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
get_config, runs = studies.noise_study(NAME, "ar_dropout")
