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
get_config, runs = studies.noise_study(NAME, "ar_input_mask")
