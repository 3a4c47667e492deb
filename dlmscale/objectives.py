"""The loss registry: pure functions `(forward, params, batch, rng, cfg) -> (loss, metrics)`.

`forward(params, tokens_BxL, *, causal, lengths_B=None, dropout_rates=None, dropout_key=None,
head=True)` returns `(logits_BxLxV, aux)`; with head=False the built-in objectives get the network's
HeadInput instead (hidden states and head matrix) and `cross_entropy` never materialises the fp32
logits; a forward that ignores `head` and returns logits works the same. Every objective adds
`aux['aux_loss']` (MoE balancing terms).
`batch['tokens']` is the shared token stream: objectives differ only in what they do to it.
`cfg` is a mapping with the objective's own arguments plus `mask_id`.
"""
from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from dlmscale.corruption import (force_one_masked, mask_tokens, random_lengths, rate_mask,
                                 sample_mask_times)
from dlmscale.errors import ConfigError
from dlmscale.models.cross_entropy import cross_entropy

Objective = Callable[..., tuple[jax.Array, dict[str, jax.Array]]]
_REGISTRY: dict[str, Objective] = {}
DEFAULT_ARGS: dict[str, dict[str, Any]] = {}
KINDS: dict[str, str] = {}  # 'ar' (scored by exact NLL) or 'dlm' (scored by the ELBO bound)
# args -> None, or a one-line problem: checked when the config is validated, before any run starts.
_CHECKS: dict[str, Callable[[Mapping[str, Any]], str | None]] = {}


def register(name: str, *, kind: str = "ar", check=None, **default_args):
  """Decorator: registers an objective under `name`, its model kind and its default arguments;
  `check(args)` returns a one-line problem with bad argument values (or None)."""
  if kind not in ("ar", "dlm"):
    raise ValueError(f"kind must be 'ar' or 'dlm', got {kind!r}")

  def wrap(fn: Objective) -> Objective:
    _REGISTRY[name] = fn
    DEFAULT_ARGS[name] = dict(default_args)
    KINDS[name] = kind
    if check is not None:
      _CHECKS[name] = check
    return fn
  return wrap


def _rate_problem(name: str, key: str = "rate"):
  def check(args):
    if not 0 <= args[key] < 1:
      return f"objective_args.{name}.{key} must be in [0, 1), got {args[key]}"
    return None
  return check


def _dropout_problem(args):
  sites = ("attention", "residual", "mlp")
  unknown = sorted(set(args["sites"]) - set(sites))
  if unknown:
    return f"objective_args.ar_dropout.sites has unknown sites {unknown}: use some of {list(sites)}"
  return _rate_problem("ar_dropout")(args)


MDM_WEIGHTINGS = ("inv_t", "inv_masked_fraction")


def _mdm_problem(args):
  if args["weighting"] not in MDM_WEIGHTINGS:
    return (f"unknown objective_args.mdm.weighting {args['weighting']!r}: use one of "
            f"{list(MDM_WEIGHTINGS)}")
  if not 0 < args["eps"] < 1:
    return f"objective_args.mdm.eps must be in (0, 1), got {args['eps']}"
  if not 0 <= args["random_length_prob"] <= 1:
    return f"objective_args.mdm.random_length_prob must be in [0, 1], got {args['random_length_prob']}"
  return None


def kind_of(name: str) -> str:
  get(name)
  return KINDS[name]


def get(name: str) -> Objective:
  if name not in _REGISTRY:
    raise ConfigError(f"unknown objective {name!r}: registered objectives are "
                      f"{sorted(_REGISTRY)} (add yours with @dlmscale.objectives.register)")
  return _REGISTRY[name]


def names() -> list[str]:
  return sorted(_REGISTRY)


def token_cross_entropy(logits_BxLxV, targets_BxL):
  """Per-token cross-entropy in fp32."""
  logits = logits_BxLxV.astype(jnp.float32)
  label_logit = jnp.take_along_axis(logits, targets_BxL[..., None], axis=-1)[..., 0]
  return jax.nn.logsumexp(logits, axis=-1) - label_logit


def aux_metrics(aux) -> dict:
  """Scalar metrics from the network's aux dict: aux_loss, and for MoE models moe_<term> (mean
  over MoE layers) plus moe_load/<e> (fraction of assignments routed to expert e)."""
  out = {"aux_loss": aux["aux_loss"]}
  for name, value in aux.items():
    if name == "expert_load":
      out.update({f"moe_load/{e}": value[e] for e in range(value.shape[0])})
    elif name != "aux_loss":
      out[f"moe_{name}"] = value
  return out


def _next_token_loss(out, tokens_BxL, aux):
  """Shifted next-token loss over the L-1 predictable positions (the last logit is unused).

  `out` is logits_BxLxV or a HeadInput. Position i's target is token i + 1; the last position
  gets weight 0 instead of being sliced off, which would copy the logits or hidden states."""
  b, l = tokens_BxL.shape
  targets_BxL = jnp.concatenate([tokens_BxL[:, 1:], tokens_BxL[:, :1]], axis=1)
  weights_BxL = jnp.broadcast_to((jnp.arange(l) < l - 1) / (b * (l - 1)), (b, l))
  nll, _, hit_BxL = cross_entropy(out, targets_BxL, weights_BxL)
  metrics = {"nll": nll, "accuracy": hit_BxL[:, :-1].mean(), **aux_metrics(aux)}
  return nll + aux["aux_loss"], metrics


@register("ar")
def ar(forward, params, batch, rng, cfg):
  """Autoregressive: causal attention, next-token cross-entropy."""
  del rng, cfg
  out, aux = forward(params, batch["tokens"], causal=True, head=False)
  return _next_token_loss(out, batch["tokens"], aux)


@register("ar_input_mask", check=_rate_problem("ar_input_mask"), rate=0.3)
def ar_input_mask(forward, params, batch, rng, cfg):
  """AR with input noise: a `rate` fraction of input tokens become the mask id; targets stay clean."""
  tokens = batch["tokens"]
  masked = jax.random.bernoulli(rng, cfg["rate"], tokens.shape)
  out, aux = forward(params, mask_tokens(tokens, masked, cfg["mask_id"]).inputs_BxL,
                     causal=True, head=False)
  loss, metrics = _next_token_loss(out, tokens, aux)
  return loss, dict(metrics, input_mask_fraction=masked.mean())


@register("ar_dropout", check=_dropout_problem, rate=0.1, sites=("attention", "residual", "mlp"))
def ar_dropout(forward, params, batch, rng, cfg):
  """AR with parameter noise: dropout at `rate` on the given sites of the network."""
  rates = {site: cfg["rate"] for site in cfg["sites"]}
  out, aux = forward(params, batch["tokens"], causal=True, dropout_rates=rates,
                     dropout_key=rng, head=False)
  return _next_token_loss(out, batch["tokens"], aux)


@register("mdm", kind="dlm", check=_mdm_problem, eps=1e-3, weighting="inv_t", antithetic=True, random_length_prob=0.0)
def mdm(forward, params, batch, rng, cfg):
  """Masked diffusion: bidirectional, tokens masked w.p. t, weighted CE on masked positions.

  weighting='inv_t': per-sequence sum of masked CE / (t * L) (the MDLM/SMDM ELBO, a bound on NLL
  per token), logged as 'elbo'. weighting='inv_masked_fraction': sum / (number masked), at least
  one masked token (the paper authors' variant), logged as 'weighted_masked_ce': its expectation is
  slightly below the ELBO, since forcing one masked token doubles the weight on it (-0.4% at L=4,
  negligible at L=2048), so it is not labelled an ELBO.
  """
  tokens = batch["tokens"]
  b, l = tokens.shape
  k_t, k_mask, k_force, k_len = jax.random.split(rng, 4)
  t_B = sample_mask_times(k_t, b, cfg["eps"], cfg["antithetic"])
  lengths_B = None
  valid_BxL = jnp.ones((b, l), bool)
  if cfg["random_length_prob"] > 0:
    lengths_B = random_lengths(k_len, b, l, cfg["random_length_prob"])
    valid_BxL = jnp.arange(l)[None, :] < lengths_B[:, None]
  masked_BxL = rate_mask(k_mask, t_B, (b, l), valid_BxL)
  if cfg["weighting"] == "inv_t":
    weight_B = 1.0 / (t_B * valid_BxL.sum(-1))
  elif cfg["weighting"] == "inv_masked_fraction":
    masked_BxL = force_one_masked(k_force, masked_BxL, valid_BxL)
    weight_B = 1.0 / jnp.maximum(masked_BxL.sum(-1), 1)
  else:
    raise ConfigError(f"unknown mdm weighting {cfg['weighting']!r}: use 'inv_t' or "
                      "'inv_masked_fraction'")
  c = mask_tokens(tokens, masked_BxL, cfg["mask_id"], weight_B)
  out, aux = forward(params, c.inputs_BxL, causal=False, lengths_B=lengths_B, head=False)
  # The mean over rows of each row's weighted sum, as one weighted sum.
  loss, all_ce_BxL, hit_BxL = cross_entropy(out, tokens, c.weights_BxL / b)
  ce_BxL = all_ce_BxL * masked_BxL
  n_masked_B = masked_BxL.sum(-1)
  correct = hit_BxL & masked_BxL
  loss_name = "elbo" if cfg["weighting"] == "inv_t" else "weighted_masked_ce"
  metrics = {loss_name: loss, "masked_ce": ce_BxL.sum() / jnp.maximum(n_masked_B.sum(), 1),
             "accuracy": correct.sum() / jnp.maximum(n_masked_B.sum(), 1),
             "mask_fraction": masked_BxL.mean(), **aux_metrics(aux)}
  return loss + aux["aux_loss"], metrics


def resolve_args(name: str, overrides: Mapping[str, Any] | None, mask_id: int) -> dict[str, Any]:
  """The objective's defaults updated by the config's overrides; unknown argument names are errors."""
  get(name)
  args = dict(DEFAULT_ARGS[name])
  for key, value in dict(overrides or {}).items():
    if key not in args:
      raise ConfigError(f"objective {name!r} has no argument {key!r}: its arguments are "
                        f"{sorted(args)}")
    args[key] = tuple(value) if isinstance(value, list) else value
  problem = _CHECKS[name](args) if name in _CHECKS else None
  if problem:
    raise ConfigError(problem)
  args["mask_id"] = mask_id
  return args
