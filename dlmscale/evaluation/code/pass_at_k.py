"""pass@k: the unbiased estimator of Chen et al. (2021) from n samples per problem, c correct.

pass@k = 1 - C(n-c, k) / C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i), the product form, which never
forms the binomials (C(200, 100) ~ 9e58: exact only as big integers, lossy as floats).
It is the probability that k samples drawn without replacement from the n include a correct one.
"""
from __future__ import annotations

import numpy as np

from dlmscale.errors import ConfigError


def pass_at_k(num_samples, num_correct, k: int) -> np.ndarray:
  """Per-problem pass@k for arrays of sample counts n and correct counts c (each c <= n)."""
  n = np.atleast_1d(np.asarray(num_samples, dtype=np.int64))
  c = np.atleast_1d(np.asarray(num_correct, dtype=np.int64))
  if n.shape != c.shape or n.ndim != 1:
    raise ConfigError(f"pass@k needs one sample count per correct count, got shapes {n.shape} "
                      f"and {c.shape}")
  if not (isinstance(k, (int, np.integer)) and k >= 1):
    raise ConfigError(f"pass@k needs an integer k >= 1, got {k!r}")
  if np.any(c < 0) or np.any(c > n):
    raise ConfigError("pass@k correct counts must lie in [0, samples per problem]")
  if n.size and n.min() < k:
    raise ConfigError(f"pass@{k} needs at least {k} samples per problem, some have {n.min()}: "
                      f"raise code.num_samples or drop k={k} from code.pass_at_k")
  # Row p multiplies (1 - k/i) over i in (n_p - c_p, n_p]; other entries are 1.
  i = np.arange(1, max(int(n.max(initial=0)), 1) + 1, dtype=np.float64)[None, :]
  used = (i > (n - c)[:, None]) & (i <= n[:, None])
  return 1.0 - np.prod(np.where(used, 1.0 - k / i, 1.0), axis=1)


def summarize(num_samples, num_correct, ks) -> dict[str, float]:
  """Mean pass@k over problems for each k, with its standard error over problems."""
  if not np.size(num_samples):
    raise ConfigError("pass@k over no problems: evaluate at least one (code.limit >= 0)")
  out = {}
  for k in ks:
    per_problem = pass_at_k(num_samples, num_correct, k)
    out[f"pass@{k}"] = float(per_problem.mean())
    size = per_problem.size
    out[f"pass@{k}_stderr"] = float(per_problem.std(ddof=1) / np.sqrt(size)) if size > 1 else 0.0
  return out
