"""Short human labels for token counts, budgets and numbers with their standard errors."""
from __future__ import annotations

import math


def tokens(x: float) -> str:
  """1.5e9 -> '1.5B', 600000 -> '600k' (three significant digits)."""
  for scale, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
    if abs(x) >= scale:
      return f"{x / scale:.3g}{suffix}"
  return f"{x:.3g}"


def epochs(e: float | None) -> str:
  return "?" if e is None or not math.isfinite(e) else f"{e:.3g}"


def budget(unique_tokens: int, total_tokens: int) -> str:
  """'U=0.5B, 192 epochs': the unique budget and how often it is repeated to reach T."""
  return f"U={tokens(unique_tokens)}, {epochs(total_tokens / unique_tokens)} ep"


def mean_se(mean, stderr, digits: int = 4) -> str:
  if mean is None or not math.isfinite(mean):
    return "-"
  if stderr is None or not math.isfinite(stderr):
    return f"{mean:.{digits}f}"
  return f"{mean:.{digits}f} ± {stderr:.{digits}f}"
