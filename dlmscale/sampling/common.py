"""Pieces shared by the samplers: prompt batching, banned ids, argument checks, jit keys."""
from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
import numpy as np

from dlmscale.errors import ConfigError


class StaticModel:
  """A Model as a static jit argument: hashed and compared by its config, which fixes the
  network (Model itself holds dicts and is not hashable)."""

  def __init__(self, model):
    self.model = model

  def __hash__(self) -> int:
    return hash(self.model.cfg)

  def __eq__(self, other) -> bool:
    return isinstance(other, StaticModel) and other.model.cfg == self.model.cfg


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int, width: int = 0):
  """(tokens_BxP int32, lengths_B int32): each prompt right-aligned in a row of P = max(width,
  longest prompt) tokens, preceded by pad_id. This is the prompt layout every sampler takes."""
  p = max([width] + [len(x) for x in prompts])
  tokens_BxP = np.full((len(prompts), p), pad_id, np.int32)
  for row, ids in zip(tokens_BxP, prompts):
    if len(ids):
      row[p - len(ids):] = ids
  return tokens_BxP, np.array([len(x) for x in prompts], np.int32)


def banned_mask(vocab_size: int, banned_ids: Sequence[int]) -> np.ndarray:
  """bool [V], True at ids never to produce (an array, so changing it does not recompile).
  Ids outside [0, V) cannot be produced anyway and are ignored."""
  banned_V = np.zeros((vocab_size,), bool)
  banned_V[[i for i in banned_ids if 0 <= i < vocab_size]] = True
  return banned_V


def ban(logits_BxTxV, banned_V):
  """Logits with the banned ids (mask, padding ids past the tokenizer's) set to -inf."""
  return jnp.where(banned_V, -jnp.inf, logits_BxTxV)


def check_temperature(temperature: float) -> None:
  if not temperature >= 0:
    raise ConfigError(f"temperature must be >= 0 (0: greedy), got {temperature}")


def prompt_lengths(prompt_BxP, lengths_B, *, minimum: int, hint: str) -> np.ndarray:
  """lengths_B (default: every row full) as int32, checked to lie in [minimum, P]."""
  b, p = np.shape(prompt_BxP)
  lengths_B = np.full((b,), p) if lengths_B is None else np.asarray(lengths_B)
  if lengths_B.shape != (b,) or (b and (lengths_B.min() < minimum or lengths_B.max() > p)):
    raise ConfigError(f"prompt lengths {lengths_B.tolist()} must be in [{minimum}, {p}] (the "
                      f"width of the left-padded prompts): {hint}")
  return lengths_B.astype(np.int32)
