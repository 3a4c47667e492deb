"""Data potential: Muennighoff et al.'s (2023) data-constrained scaling law, fitted per objective.

Repeated tokens are worth less than new ones: with U unique tokens seen for R = epochs - 1
repetitions, the effective data is D' = U + U R* (1 - exp(-R / R*)), so repeating keeps paying
until about R* repetitions and saturates at U (1 + R*). For one model size the final validation
loss is modelled as L = E + B (D' / D_ref)^(-beta) (D_ref: the geometric mean of U, to keep B of
order one), and E, B, beta and R* are fitted jointly across the budgets of one objective by
weighted least squares (scipy.optimize.least_squares, log B and log R* as parameters, several
starting points). R* is the objective's "data potential"; the paper's claim is R*_DLM / R*_AR > 3.

Confidence interval: Jacobian-based. The covariance of the parameters is s^2 (J^T J)^-1 at the
optimum, J the Jacobian of the weighted residuals; with per-point stderrs s^2 = max(1, reduced
chi^2) (the stated errors, inflated when the model misfits them), else s^2 = RSS / (n - 4) with a
Student-t quantile. The interval is symmetric in log R* (R* > 0). A fit whose R* sits at a bound,
whose J^T J is singular (e.g. no point was repeated, so R* never enters) or whose interval spans
more than a factor 100 is flagged `determined: False`; fewer than 5 points is an error.
"""
from __future__ import annotations

import math

import numpy as np

from dlmscale.errors import DlmscaleError

NUM_PARAMS = 4  # E, log B, beta, log R*
_LOG_R_BOUNDS = (math.log(1e-2), math.log(1e5))
_WIDE = 100.0  # an interval wider than this factor says the data do not pin R* down


def effective_data(unique_tokens, tokens, r_star):
  """D' = U + U R* (1 - exp(-R / R*)), R = tokens / U - 1 repetitions (0 within the first epoch)."""
  u = np.asarray(unique_tokens, np.float64)
  repeats = np.maximum(np.asarray(tokens, np.float64) / u - 1.0, 0.0)
  return u + u * r_star * -np.expm1(-repeats / r_star)


def predict(params: dict, unique_tokens, tokens):
  """The fitted loss at (U, tokens) for a fit's parameters."""
  d = effective_data(unique_tokens, tokens, params["r_star"]) / params["d_ref"]
  return params["E"] + params["B"] * d ** -params["beta"]


def _model(theta, u, t, d_ref):
  e, log_b, beta, log_r = theta
  return e + np.exp(log_b) * (effective_data(u, t, np.exp(log_r)) / d_ref) ** -beta


def fit_data_potential(unique_tokens, tokens, loss, stderr=None, *, level: float = 0.95) -> dict:
  """Fits L = E + B (D'/D_ref)^-beta to final losses at (U, tokens); returns {r_star,
  r_star_interval: [lo, hi], log_r_star_se, E, B, beta, d_ref, n, level, determined, note,
  method}. DlmscaleError with fewer than 5 points."""
  from scipy import optimize, stats  # scipy comes with jax; imported where the fit runs

  u, t, y = (np.asarray(a, np.float64) for a in (unique_tokens, tokens, loss))
  n = y.size
  if not u.size == t.size == n:
    raise DlmscaleError(f"unique_tokens, tokens and loss differ in length "
                        f"({u.size}, {t.size}, {n})")
  if n <= NUM_PARAMS:
    raise DlmscaleError(f"the data-potential fit (E, B, beta, R*) needs at least "
                        f"{NUM_PARAMS + 1} final losses; got {n}")
  known_errors = stderr is not None and np.all(np.isfinite(stderr)) and np.all(
      np.asarray(stderr) > 0)
  sigma = np.asarray(stderr, np.float64) if known_errors else np.ones(n)
  d_ref = float(np.exp(np.mean(np.log(u))))
  spread = max(float(y.max() - y.min()), 1e-3)
  lower = [-np.inf, -30.0, 1e-3, _LOG_R_BOUNDS[0]]
  upper = [float(y.min()), 30.0, 3.0, _LOG_R_BOUNDS[1]]

  def residuals(theta):
    return (_model(theta, u, t, d_ref) - y) / sigma

  best = None
  # The loss surface has flat valleys along R* (and beta vs B): start from several places.
  for r0 in (1.0, 10.0, 100.0, 1000.0):
    for beta0 in (0.1, 0.5):
      theta0 = [float(y.min()) - spread, math.log(spread), beta0, math.log(r0)]
      fit = optimize.least_squares(residuals, theta0, bounds=(lower, upper), method="trf",
                                   x_scale="jac", max_nfev=5000)
      if best is None or fit.cost < best.cost:
        best = fit
  e, log_b, beta, log_r = best.x
  dof = n - NUM_PARAMS
  rss = 2.0 * best.cost
  scale = max(1.0, rss / dof) if known_errors else rss / dof
  quantile = (stats.norm.ppf(0.5 + level / 2) if known_errors
              else stats.t.ppf(0.5 + level / 2, dof))
  jtj = best.jac.T @ best.jac
  eig = np.linalg.eigvalsh(jtj)
  notes = []
  if eig.min() <= 1e-10 * max(eig.max(), 1e-300):
    se = math.inf
    notes.append("R* is not identified by these points (singular Jacobian: are any repeated?)")
  else:
    se = float(math.sqrt(max(np.linalg.inv(jtj)[3, 3] * scale, 0.0)))
  lo, hi = (math.exp(log_r - quantile * se), math.exp(log_r + quantile * se)) if math.isfinite(
      se) else (0.0, math.inf)
  if min(log_r - _LOG_R_BOUNDS[0], _LOG_R_BOUNDS[1] - log_r) < 1e-3:
    notes.append(f"R* at the bound of the search range [{math.exp(_LOG_R_BOUNDS[0]):g}, "
                 f"{math.exp(_LOG_R_BOUNDS[1]):g}]")
  if hi / max(lo, 1e-300) > _WIDE and math.isfinite(se):
    notes.append(f"interval wider than a factor {_WIDE:g}")
  return {"r_star": math.exp(log_r), "r_star_interval": [lo, hi], "log_r_star_se": se,
          "E": float(e), "B": math.exp(log_b), "beta": float(beta), "d_ref": d_ref, "n": n,
          "level": level, "determined": not notes, "note": "; ".join(notes),
          "method": ("Jacobian covariance, stated stderrs x max(1, reduced chi2), normal quantile"
                     if known_errors else "Jacobian covariance, RSS/(n-4), Student-t quantile")}


def potential_ratio(dlm: dict, ar: dict) -> dict:
  """R*_DLM / R*_AR with an interval from the two fits' log-R* stderrs (independent fits)."""
  level = min(dlm["level"], ar["level"])
  from scipy import stats

  ratio = dlm["r_star"] / ar["r_star"]
  se = math.hypot(dlm["log_r_star_se"], ar["log_r_star_se"])
  q = stats.norm.ppf(0.5 + level / 2)
  interval = ([ratio * math.exp(-q * se), ratio * math.exp(q * se)] if math.isfinite(se)
              else [0.0, math.inf])
  return {"ratio": ratio, "interval": interval, "level": level,
          "determined": dlm["determined"] and ar["determined"]}
