"""The paper's whole programme priced by the planner: every study's paper-scale runs, one table.

  python benchmarks/plan_programme.py [--topology=v5p-128] [--mfu=0.4]

Runs that several studies share (the 1B at 1B unique x 96 epochs appears in crossover, model size,
sparse vs dense and both noise studies; the dense 8B in model size and sparse vs dense) are counted
once in the programme total: same resolved config, same run.
"""
import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from dlmscale import config as config_lib  # noqa: E402
from dlmscale import config_files, experiment, planner  # noqa: E402

STUDIES = ("crossover", "long_run", "data_quality", "model_size", "sparse_dense", "input_noise",
           "dropout", "coder")


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--topology", default="v5p-128")
  parser.add_argument("--mfu", type=float, default=0.4)
  args = parser.parse_args()
  accel = planner.accelerator(args.topology)
  seen, per_study = {}, []
  for study in STUDIES:
    module = config_files.load_module(os.path.join(ROOT, "experiments", f"{study}.py"))
    rows = []
    for arg in module.runs("paper"):
      cfg = module.get_config(arg)
      row = planner.plan_run(cfg, f"{study}:{arg.replace(',scale=paper', '')}", accel, args.mfu,
                             experiment.tokenizer_ids(cfg)[0])
      rows.append(row)
      seen.setdefault(config_lib.to_json(cfg), row)
    per_study.append((study, rows))
  print(f"| study | runs | training FLOPs | chip-hours on {args.topology} at {args.mfu:.0%} MFU |")
  print("|---|---:|---:|---:|")
  for study, rows in per_study:
    print(f"| {study} | {len(rows)} | {sum(r['train_flops'] for r in rows):.3g} | "
          f"{sum(r['chip_hours'] for r in rows):,.0f} |")
  unique = list(seen.values())
  print(f"| whole programme, shared runs once | {len(unique)} | "
        f"{sum(r['train_flops'] for r in unique):.3g} | "
        f"{sum(r['chip_hours'] for r in unique):,.0f} |")
  print(json.dumps({"topology": args.topology, "mfu": args.mfu, "unique_runs": len(unique),
                    "chip_hours": sum(r["chip_hours"] for r in unique)}))


if __name__ == "__main__":
  main()
