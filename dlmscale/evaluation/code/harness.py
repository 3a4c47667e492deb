"""pass@k on HumanEval / MBPP for any text generator (`--mode=code` is dlmscale.modes.code).

evaluate_code asks the generator for num_samples completions per prompt (one call with every
prompt: batching is the generator's business), cuts each at the benchmark's stop sequences, runs
prompt + completion + tests in the sandbox and reports pass@k per k with per-problem results.
A generator may answer None for a prompt it cannot take (--mode=code: the prompt does not fit
the model's window); those samples are 'skipped', not run, and count as wrong, so pass@k keeps
the whole benchmark as its denominator.
"""
from __future__ import annotations

import collections
import json
import logging
import numbers
import os
import time
from typing import Callable, Sequence

from dlmscale import objectives
from dlmscale.errors import ConfigError
from dlmscale.evaluation.code import pass_at_k, problems as problems_lib, sandbox

log = logging.getLogger("dlmscale")
GenerateFn = Callable[[list[str], int], list[list[str | None]]]
SKIPPED = sandbox.ExecResult("skipped", "not generated: the prompt does not fit the model", "",
                             0.0, "")


def evaluate_code(generate_fn: GenerateFn, benchmark: str = "humaneval", *, num_samples: int = 1,
                  ks: Sequence[int] = (1,), limit: int = 0, timeout_s: float = 10.0,
                  memory_mb: int = 1024, workers: int | None = None,
                  network: str = "auto", backend: str = "auto") -> dict:
  """pass@k of generate_fn(prompts, num_samples) -> completions (one list per prompt).

  `backend` is the sandbox's (sandbox_bwrap.BACKENDS; 'auto': bubblewrap where it works).
  Returns {"pass@k", "pass@k_stderr" for each k, counts, settings, "problems": [{task_id,
  num_correct, samples: [{completion (after the stop cut), status, detail}]}]}."""
  ks = parse_ks(ks)
  check_settings(benchmark, num_samples, ks, timeout_s, memory_mb, network, limit, backend)
  problems = problems_lib.load_problems(benchmark, limit)
  start = time.monotonic()
  completions = generate_fn([p.prompt for p in problems], num_samples)
  _check_shape(completions, len(problems), num_samples)
  generate_s = time.monotonic() - start
  cut = [[None if c is None else problems_lib.truncate_completion(c, p.stop) for c in cs]
         for p, cs in zip(problems, completions)]
  programs = [p.program(c) for p, cs in zip(problems, cut) for c in cs if c is not None]
  ran = iter(sandbox.run_programs(programs, workers=workers, timeout_s=timeout_s,
                                  memory_mb=memory_mb, network=network, backend=backend))
  results = [SKIPPED if c is None else next(ran) for cs in cut for c in cs]
  per_problem = []
  for i, (p, cs) in enumerate(zip(problems, cut)):
    mine = results[i * num_samples:(i + 1) * num_samples]
    per_problem.append({
        "task_id": p.task_id, "num_correct": sum(r.passed for r in mine),
        "samples": [{"completion": c, "status": r.status, "detail": r.detail}
                    for c, r in zip(cs, mine)]})
  correct = [q["num_correct"] for q in per_problem]
  scores = pass_at_k.summarize([num_samples] * len(problems), correct, ks)
  log.info("[%s] %s (%d problems x %d samples) in %.1fs", benchmark,
           ", ".join(f"pass@{k} {scores[f'pass@{k}']:.4f}" for k in ks), len(problems),
           num_samples, time.monotonic() - start)
  return {
      "benchmark": benchmark, "num_problems": len(problems), "num_samples": num_samples,
      **scores,
      "statuses": dict(collections.Counter(r.status for r in results)),
      "problems_skipped": sum(all(c is None for c in cs) for cs in cut),
      "network_isolation": sorted({r.network for r in results if r.network}),
      "sandbox_backend": sorted({r.backend for r in results if r.backend}),
      "timeout_s": timeout_s, "memory_mb": memory_mb,
      "generate_seconds": generate_s, "execute_seconds": time.monotonic() - start - generate_s,
      "problems": per_problem,
  }


def check_settings(benchmark: str, num_samples: int, ks: Sequence[int], timeout_s: float,
                   memory_mb: int, network: str = "auto", limit: int = 0,
                   backend: str = "auto") -> None:
  """ConfigError for settings evaluate_code would reject, before anything expensive runs."""
  if benchmark not in problems_lib.STOPS:
    raise ConfigError(f"unknown code benchmark {benchmark!r}: use one of "
                      f"{list(problems_lib.STOPS)}")
  if not (isinstance(num_samples, numbers.Integral) and num_samples >= 1):
    raise ConfigError(f"code.num_samples must be an integer >= 1, got {num_samples!r}")
  if not ks or max(ks) > num_samples or min(ks) < 1:
    raise ConfigError(f"code.pass_at_k={tuple(ks)} needs 1 <= k <= code.num_samples="
                      f"{num_samples}: raise num_samples or drop the larger k")
  if not (isinstance(limit, numbers.Integral) and limit >= 0):
    raise ConfigError(f"code.limit must be an integer >= 0 (0: every problem), got {limit!r}")
  sandbox.check_limits(timeout_s, memory_mb, network, backend)


def parse_ks(value) -> tuple[int, ...]:
  """code.pass_at_k (a sequence of ints, or one int) as a tuple of ints."""
  try:
    return tuple(int(k) for k in ((value,) if isinstance(value, numbers.Integral) else value))
  except (TypeError, ValueError):
    raise ConfigError(f"code.pass_at_k={value!r} is not a list of integers, e.g. (1, 10)") from None


def _check_shape(completions, num_prompts: int, num_samples: int) -> None:
  ok = (isinstance(completions, (list, tuple)) and len(completions) == num_prompts and
        all(isinstance(cs, (list, tuple)) and len(cs) == num_samples and
            all(c is None or isinstance(c, str) for c in cs) for cs in completions))
  if not ok:
    raise ConfigError(f"generate_fn must return, for each of the {num_prompts} prompts, a list "
                      f"of {num_samples} completion strings (None: prompt skipped)")


def prompt_fits(lm, prompt: str, max_new_tokens: int) -> bool:
  """Whether generate_text can take the prompt: a leading eod + its ids + the answer fit the
  window the model was trained on (lm.seq_len)."""
  return 1 + len(lm.tokenizer.encode(prompt)) + max_new_tokens <= lm.seq_len


def check_code_config(cfg, objective_names) -> tuple[int, ...]:
  """ConfigError for a --mode=code config that cannot give a meaningful pass@k; returns the ks."""
  code, s = cfg.code, cfg.sample
  ks = parse_ks(code.pass_at_k)
  check_settings(code.benchmark, code.num_samples, ks, code.timeout_s, code.memory_mb,
                 limit=code.limit)
  for objective in objective_names:
    random_order = objectives.kind_of(objective) == "dlm" and s.remasking == "random"
    if s.temperature == 0 and code.num_samples > 1 and not random_order:
      raise ConfigError(f"code.num_samples={code.num_samples} with sample.temperature=0: "
                        f"{objective}'s samples would all be the same; set sample.temperature > 0 "
                        "(Codex: 0.2 for pass@1, 0.8 for pass@10+) or code.num_samples=1 and "
                        "code.pass_at_k=(1,)")
  return ks
