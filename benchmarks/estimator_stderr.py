"""Monte Carlo error of the DLM likelihood estimators at 32 and 128 samples.

  python benchmarks/estimator_stderr.py [--workdir=/tmp/estimator_stderr] [--seeds=24]

Trains the tiny test config (AR and MDM, 16 steps; reused if the workdir holds it), scores 64
(20-byte context, 8-byte continuation) requests cut from the stdlib's textwrap.py with each
estimator, and compares the reported stderr with the spread of the estimate over seeds.
Results go to BENCHMARKS.md ("DLM likelihood estimators").
"""
from __future__ import annotations

import argparse
import os
import sys
import sysconfig

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import numpy as np  # noqa: E402

from _shared import tiny_config  # noqa: E402
from dlmscale.evaluation.loaded import load_model  # noqa: E402
from dlmscale.evaluation.scorer import Scorer  # noqa: E402
from dlmscale.experiment import train_all  # noqa: E402


def requests(n: int = 64) -> list[tuple[str, str]]:
  src = open(os.path.join(sysconfig.get_paths()["stdlib"], "textwrap.py")).read()
  starts = np.random.default_rng(0).integers(0, len(src) - 40, n)
  return [(src[s:s + 20], src[s + 20:s + 28]) for s in starts]


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default="/tmp/estimator_stderr")
  parser.add_argument("--seeds", type=int, default=24)
  args = parser.parse_args()
  cfg = tiny_config()
  if not os.path.isdir(os.path.join(args.workdir, "mdm", "checkpoints")):
    train_all(cfg, args.workdir)
  reqs = requests()
  ar = Scorer(load_model(cfg, args.workdir, "ar"), batch_size=32).loglikelihood(reqs)
  print(f"| AR exact | - | - | {np.mean([r.logprob for r in ar]):.2f} |")
  lm = load_model(cfg, args.workdir, "mdm")
  print("| estimator | samples | mean reported stderr | mean estimate | spread over seeds |")
  print("|---|---:|---:|---:|---:|")
  for estimator, counts in (("fixed_count", (32, 128)), ("iid", (32, 128)), ("chain", (1,))):
    for samples in counts:
      runs = [Scorer(lm, estimator=estimator, num_samples=samples, batch_size=256, seed=seed)
              .loglikelihood(reqs[:16] if seed else reqs)
              for seed in range(args.seeds if estimator != "chain" else 1)]
      first = runs[0]
      spread = (np.array([[r.logprob for r in run] for run in runs[1:]]).std(0, ddof=1).mean()
                if len(runs) > 2 else 0.0)
      print(f"| {estimator} | {samples} | {np.mean([r.stderr for r in first]):.3f} | "
            f"{np.mean([r.logprob for r in first]):.2f} | {spread:.3f} |", flush=True)


if __name__ == "__main__":
  main()
