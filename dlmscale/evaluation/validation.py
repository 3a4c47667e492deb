"""Held-out validation: exact NLL for AR models, the masked-diffusion ELBO bound for DLMs.

Both are reported per token in nats with a standard error across sequences. The ELBO is an upper
bound on the DLM's NLL, estimated with `num_samples` mask draws per sequence (t stratified).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlmscale import parallel
from dlmscale.corruption import mask_tokens, rate_mask, stratified_times
from dlmscale.objectives import token_cross_entropy
from dlmscale.progress import Progress


def ar_nll_per_sequence(model, params, tokens_BxL):
  """Summed next-token NLL of each sequence over its L-1 predictable positions."""
  logits, _ = model.apply(params, tokens_BxL, causal=True)
  return token_cross_entropy(logits[:, :-1], tokens_BxL[:, 1:]).sum(-1)


def dlm_elbo_per_sequence(model, params, tokens_BxL, rng, *, num_samples: int, mask_id: int,
                          eps: float = 1e-3):
  """Monte Carlo ELBO bound on each sequence's NLL: mean over samples of sum_masked CE / t.

  Sample k of every sequence uses t = eps + (1-eps) (k + u)/S (stratified over S samples)."""
  b, _ = tokens_BxL.shape
  k_u, k_mask = jax.random.split(rng)
  u_B = jax.random.uniform(k_u, (b,))

  def one_sample(total_B, k):
    t_B = stratified_times(u_B, k, num_samples, eps)
    masked = rate_mask(jax.random.fold_in(k_mask, k), t_B, tokens_BxL.shape)
    c = mask_tokens(tokens_BxL, masked, mask_id, 1.0 / t_B)
    logits, _ = model.apply(params, c.inputs_BxL, causal=False)
    return total_B + (token_cross_entropy(logits, tokens_BxL) * c.weights_BxL).sum(-1), None

  total_B, _ = jax.lax.scan(one_sample, jnp.zeros((b,), jnp.float32), jnp.arange(num_samples))
  return total_B / num_samples


def evaluate_validation(model, params, val_MxL: np.ndarray, kind: str, *, mesh, rules,
                        batch_size: int, num_samples: int, mask_id: int, seed: int = 0) -> dict:
  """Per-token validation NLL ('ar') or ELBO bound ('dlm') over all held-out sequences."""
  m, l = val_MxL.shape
  dp = parallel.data_parallel_size(mesh, rules)
  batch_size = -(-batch_size // dp) * dp
  sharding = parallel.batch_sharding(mesh, rules)
  if kind == "ar":
    per_seq = lambda p, x, r: ar_nll_per_sequence(model, p, x)
    tokens_per_seq = l - 1
  else:
    per_seq = lambda p, x, r: dlm_elbo_per_sequence(model, p, x, r, num_samples=num_samples,
                                                    mask_id=mask_id)
    tokens_per_seq = l
  # Replicated output: every process can read the per-sequence values in a multi-host job.
  fn = jax.jit(per_seq, out_shardings=parallel.replicated(mesh))
  sums = []
  with Progress(f"validation {'nll' if kind == 'ar' else 'elbo'}", m, "seq") as bar:
    for i, start in enumerate(range(0, m, batch_size)):
      chunk = val_MxL[start:start + batch_size].astype(np.int32)
      n = len(chunk)
      padded = np.concatenate([chunk, np.zeros((batch_size - n, l), np.int32)]) \
          if n < batch_size else chunk
      rng = jax.random.fold_in(jax.random.key(seed), i)
      out = fn(params, jax.device_put(padded, sharding), rng)
      sums.append(np.asarray(jax.device_get(out))[:n])
      bar.update(n)
    per_token = np.concatenate(sums) / tokens_per_seq
    result = {"mean": float(per_token.mean()),
              "stderr": float(per_token.std(ddof=1) / np.sqrt(m)) if m > 1 else float("nan"),
              "sequences": int(m), "tokens": int(m * tokens_per_seq)}
    bar.summary = f"{result['mean']:.4f} +- {result['stderr']:.4f} nats/token"
  return result
