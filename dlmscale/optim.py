"""Optimizer and learning-rate schedules; the token budget fixes the number of steps."""
from __future__ import annotations

import jax
import optax


def make_schedule(tc, num_steps: int) -> optax.Schedule:
  """Linear warmup, then 'wsd' (stable, then linear decay over the last decay_fraction of steps),
  'cosine' (cosine to min_lr) or 'constant'."""
  warmup = min(tc.warmup_steps, max(num_steps - 1, 0))
  rest = max(num_steps - warmup, 1)
  warm = optax.linear_schedule(0.0, tc.lr, max(warmup, 1))
  if tc.schedule == "cosine":
    after = optax.cosine_decay_schedule(tc.lr, rest, alpha=tc.min_lr / tc.lr)
  elif tc.schedule == "wsd":
    decay = max(int(round(tc.decay_fraction * num_steps)), 1)
    stable = max(rest - decay, 0)
    after = optax.join_schedules(
        [optax.constant_schedule(tc.lr), optax.linear_schedule(tc.lr, tc.min_lr, decay)],
        [stable])
  else:
    after = optax.constant_schedule(tc.lr)
  return optax.join_schedules([warm, after], [warmup])


def decay_mask(logical_axes) -> dict:
  """Weight decay on matrices only: norm scales (vectors once the layer axis is dropped) are exempt."""
  return jax.tree.map(lambda axes: len([a for a in axes if a != "layers"]) > 1, logical_axes,
                      is_leaf=lambda x: isinstance(x, tuple))


def make_optimizer(tc, num_steps: int, logical_axes) -> optax.GradientTransformation:
  """AdamW with global-norm clipping (defaults b1 0.9, b2 0.95, wd 0.1, clip 1.0)."""
  return optax.chain(
      optax.clip_by_global_norm(tc.grad_clip),
      optax.adamw(make_schedule(tc, num_steps), b1=tc.b1, b2=tc.b2, eps=tc.adam_eps,
                  weight_decay=tc.weight_decay, mask=decay_mask(logical_axes)))
