"""Optimizer presets."""

# The authors' recipe: AdamW(0.9, 0.95), wd 0.1, clip 1.0, 2e-4 peak -> 2e-5, warmup-stable-decay
# with 2000 warmup steps.
PAPER = dict(lr=2e-4, min_lr=2e-5, schedule="wsd", warmup_steps=2000, decay_fraction=0.1,
             b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0)
# Small models on CPU tolerate (and need, to learn in minutes) a much higher rate.
CPU_FAST = dict(lr=3e-3, min_lr=3e-4, schedule="wsd", warmup_steps=30, decay_fraction=0.2)
# The paper's AdamW + WSD for the 17-100M-parameter GPU twins of configs/studies.py: a higher peak
# for small models, and a warmup that fits runs of a few hundred to a few thousand steps.
GPU_SMALL = dict(PAPER, lr=1e-3, min_lr=1e-4, warmup_steps=50)
