"""Benchmark scores from option log-likelihoods: acc, acc_norm, delta-NLL, LAMBADA perplexity.

A scorer (dlmscale.evaluation.scorer.Scorer: exact for AR, a Monte Carlo bound for DLM) gives
log p(continuation | context) per option. As lm-evaluation-harness does, acc picks the option of
highest log-likelihood and acc_norm the highest log-likelihood per character of the choice text;
each comes with the standard error of the mean of its per-example 0/1 scores.

Delta-NLL (the paper's "validation loss rises while accuracy improves"): per example,
NLL(correct) = -log p(gold option); delta_nll_mean = mean NLL of the wrong options - NLL(correct);
delta_nll_min = NLL of the most likely wrong option - NLL(correct) (> 0 exactly when the gold
option wins). A model can grow more confident in its ranking (delta up, acc up) while its NLL of
the correct answers rises.
"""
from __future__ import annotations

import math

import numpy as np

from dlmscale.errors import ConfigError
from dlmscale.evaluation.scorer import Scorer
from dlmscale.evaluation.tasks import Task, check_task_names, load_task
from dlmscale.progress import Progress


def mean_stderr(values_N) -> tuple[float, float]:
  """Mean and its standard error: sample standard deviation (ddof=1) / sqrt(n); nan for n < 2."""
  values_N = np.asarray(values_N, np.float64)
  n = values_N.size
  if n == 0:
    return math.nan, math.nan
  stderr = float(np.std(values_N, ddof=1) / math.sqrt(n)) if n > 1 else math.nan
  return float(np.mean(values_N)), stderr


def choice_scores(lls_NxK, gold_N, lengths_NxK, valid_NxK) -> dict[str, np.ndarray]:
  """Per-example acc, acc_norm (0/1) and delta-NLL terms. Options past an example's count are
  marked invalid in valid_NxK (their log-likelihood and length are ignored)."""
  lls_NxK = np.where(valid_NxK, np.asarray(lls_NxK, np.float64), -np.inf)
  gold_N = np.asarray(gold_N)
  per_char_NxK = lls_NxK / np.maximum(np.asarray(lengths_NxK, np.float64), 1.0)
  nll_NxK = -lls_NxK
  nll_correct_N = np.take_along_axis(nll_NxK, gold_N[:, None], axis=1)[:, 0]
  wrong_NxK = valid_NxK & (np.arange(lls_NxK.shape[1])[None, :] != gold_N[:, None])
  num_wrong_N = wrong_NxK.sum(axis=1)
  mean_wrong_N = np.where(wrong_NxK, nll_NxK, 0.0).sum(axis=1) / np.maximum(num_wrong_N, 1)
  min_wrong_N = np.where(wrong_NxK, nll_NxK, np.inf).min(axis=1)
  return {"acc": (np.argmax(lls_NxK, axis=1) == gold_N).astype(np.float64),
          "acc_norm": (np.argmax(per_char_NxK, axis=1) == gold_N).astype(np.float64),
          "nll_correct": nll_correct_N,
          "delta_nll_mean": mean_wrong_N - nll_correct_N,
          "delta_nll_min": min_wrong_N - nll_correct_N}


def summarize(per_example: dict[str, np.ndarray]) -> dict[str, float]:
  """{name: mean, name_stderr: its standard error} for each per-example score."""
  out = {}
  for name, values_N in per_example.items():
    out[name], out[f"{name}_stderr"] = mean_stderr(values_N)
  return out


def loglikelihood_scores(lls_N, greedy_N) -> dict[str, float]:
  """LAMBADA-style metrics: acc = the continuation is the greedy one; perplexity =
  exp(-mean log-likelihood) over examples (lm-eval's), its stderr by the delta method."""
  out = summarize({"acc": np.asarray(greedy_N, np.float64),
                   "nll": -np.asarray(lls_N, np.float64)})
  out["perplexity"] = math.exp(out["nll"])
  out["perplexity_stderr"] = out["perplexity"] * out["nll_stderr"]
  return out


def _options_table(task: Task, examples, results):
  """Flat per-request results regrouped into padded per-example arrays (N x max options)."""
  num_options = max(e.num_options for e in examples)
  shape = (len(examples), num_options)
  lls, stderrs = np.zeros(shape), np.zeros(shape)
  greedy, lengths, valid = np.zeros(shape, bool), np.ones(shape), np.zeros(shape, bool)
  offset = 0
  for i, e in enumerate(examples):
    k = e.num_options
    for j, r in enumerate(results[offset:offset + k]):
      lls[i, j], stderrs[i, j], greedy[i, j] = r.logprob, r.stderr, r.greedy
    lengths[i, :k], valid[i, :k] = e.choice_lengths, True
    offset += k
  return lls, stderrs, greedy, lengths, valid


def score_task(scorer, task: Task, *, num_fewshot: int = 0, limit: int = 0,
               seed: int = 0) -> dict:
  """Scores the first `limit` examples (all when 0) with `num_fewshot` demos each.

  Returns the task's metrics (floats) plus 'examples': per example its gold index and every
  option's log-likelihood (with the scorer's Monte Carlo stderr and greedy flag), and for a task
  of several groups (MMLU's subjects) 'groups': acc, acc_norm and count per group."""
  if num_fewshot < 0 or limit < 0:
    raise ConfigError(f"num_fewshot={num_fewshot}, limit={limit}: both must be >= 0")
  count = min(limit, len(task.examples)) if limit else len(task.examples)
  examples = task.examples[:count]
  requests = [r for i, e in enumerate(examples)
              for r in e.requests(task.demos(i, num_fewshot, seed))]
  bar = Progress(task.name, len(requests), "req")
  try:
    # Other scorers (lm-eval's, tests') take the requests alone.
    results = list(scorer.loglikelihood(requests, bar) if isinstance(scorer, Scorer)
                   else scorer.loglikelihood(requests))
  except ConfigError as e:  # e.g. a continuation longer than the window: say which task
    bar.close(finished=False)
    raise ConfigError(f"{task.name} ({num_fewshot}-shot): {e}") from None
  if len(results) != len(requests):
    raise ValueError(f"scorer returned {len(results)} results for {len(requests)} requests")
  lls, stderrs, greedy, lengths, valid = _options_table(task, examples, results)
  gold = np.array([e.gold for e in examples])
  if task.output == "loglikelihood":
    metrics = loglikelihood_scores(lls[:, 0], greedy[:, 0])
  else:
    per_example = choice_scores(lls, gold, lengths, valid)
    metrics = summarize(per_example)
    groups = np.array([e.group for e in examples])
    if len(set(groups)) > 1:  # MMLU: per subject too; the task's figures pool all questions
      metrics["groups"] = {str(g): {"acc": float(per_example["acc"][groups == g].mean()),
                                    "acc_norm": float(per_example["acc_norm"][groups == g].mean()),
                                    "num_examples": int((groups == g).sum())}
                           for g in sorted(set(groups))}
  metrics.update(num_examples=count, num_fewshot=num_fewshot)
  bar.summary = task_line(metrics)
  bar.close()
  metrics["examples"] = [
      {"gold": int(gold[i]), "loglikelihoods": lls[i, :e.num_options].tolist(),
       "stderrs": stderrs[i, :e.num_options].tolist(),
       "greedy": greedy[i, :e.num_options].tolist()}
      for i, e in enumerate(examples)]
  return metrics


def evaluate_tasks(scorer, task_names, *, num_fewshot: int = 0, limit: int = 0, seed: int = 0,
                   paths: dict[str, str] | None = None) -> dict[str, dict]:
  """{task: metrics} for each named task (see dlmscale.evaluation.tasks), read from paths[task]
  when given, else from the packaged data; `heldout` tasks from the scorer's model's own
  validation split, drawn with `seed`."""
  names = check_task_names(task_names)
  paths = dict(paths or {})
  extra = sorted(set(paths) - set(names))
  if extra:
    raise ConfigError(f"paths given for tasks not evaluated: {extra}; add them to the task list")
  lm = getattr(scorer, "lm", None)
  return {name: score_task(scorer, load_task(name, paths.get(name), lm=lm, seed=seed),
                           num_fewshot=num_fewshot, limit=limit, seed=seed)
          for name in names}


def task_line(m: dict) -> str:
  """One task's headline figures: 'acc 0.3120 +- 0.0210, acc_norm ... (400 examples, 0-shot)'."""
  figures = [f"{key} {m[key]:.4f} +- {m[key + '_stderr']:.4f}"
             for key in ("acc", "acc_norm", "perplexity") if key in m]
  return f"{', '.join(figures)} ({m['num_examples']} examples, {m['num_fewshot']}-shot)"


_COLUMNS = (("acc", "acc"), ("acc_norm", "acc_norm"), ("nll_correct", "NLL(correct)"),
            ("delta_nll_mean", "dNLL mean"), ("delta_nll_min", "dNLL min"),
            ("perplexity", "ppl"))


def format_table(results: dict[str, dict]) -> str:
  """A Markdown table: per task the example count and each metric as mean +- stderr."""
  header = "| task | n | shots | " + " | ".join(title for _, title in _COLUMNS) + " |"
  lines = [header, "|" + "---|" * (3 + len(_COLUMNS))]
  for name, m in results.items():
    cells = [f"{m[key]:.4f} +- {m[key + '_stderr']:.4f}" if key in m else "-"
             for key, _ in _COLUMNS]
    lines.append(f"| {name} | {m['num_examples']} | {m['num_fewshot']} | "
                 + " | ".join(cells) + " |")
  return "\n".join(lines)
