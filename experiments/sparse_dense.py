"""Sparse vs dense (PAPER.md "Experiments", fifth row): a dense 1B ("1B1A"), an MoE of 8B total
and 1B active parameters ("8B1A") and a dense 8B ("8B8A") on 1B unique tokens x 96 epochs, AR vs
masked diffusion. The crossover holds for sparse models too; 8B1A has the 1B's compute per
token and the 8B's parameters.

Arguments: model=1B1A|8B1A|8B8A, objective=ar|mdm, scale=paper|gpu|cpu (default:
model=1B1A,objective=ar,scale=paper); 6 runs a scale.

  python -m dlmscale.main --config=experiments/sparse_dense.py:model=8B1A,objective=mdm,scale=cpu \
      --workdir=runs/sparse_dense-cpu-8B1A-mdm

paper: the configs of experiments/dense_1b.py, moe_1b.py and dense_8b.py (configs/sparse_study.py:
models, batch 256 / 256 / 1024, meshes, capacity dispatch for the MoE), on the corpus and
evaluation points of the other studies (C4 with GPT-2 tokens, configs/studies.py) instead of
configs/prepare_nl.py's 23M tokens, which cannot hold a 1B-unique budget.
gpu / cpu: GPU_17M / TINY, its MoE twin GPU_MOE_95M / CPU_MOE_940K (12x the FFN parameters at the
same compute per token, as PAPER_8B1A; configs/models.py) and a dense model of about the MoE's
total, GPU_98M / SMALL_CPU; batch 32 / 32 / 128, T = 18,874,368 / 3,145,728 tokens, U = 196,608 /
32,768 (gpu / cpu). model=1B1A is the crossover study's unique=1B run and 8B8A the model-size
study's 8B. A cpu run takes 3 (1B1A) to ~10 minutes (8B1A, 8B8A).
"""
import functools
import importlib.util
import os

from configs import models, studies

NAME = "sparse_dense"
SCALES = studies.SCALES  # what a sweep may ask runs() for
MODELS = ("1B1A", "8B1A", "8B8A")
PAPER_FILES = {"1B1A": "dense_1b", "8B1A": "moe_1b", "8B8A": "dense_8b"}
TWINS = {
    "gpu": {"1B1A": models.GPU_17M, "8B1A": models.GPU_MOE_95M, "8B8A": models.GPU_98M},
    "cpu": {"1B1A": models.TINY, "8B1A": models.CPU_MOE_940K, "8B8A": models.SMALL_CPU},
}
BATCH_MULT = {"1B1A": 1, "8B1A": 1, "8B8A": 4}  # as the paper-scale files: by active size
UNIQUE, TOTAL = 1, 96  # paper billions of tokens
CHOICES = {"model": MODELS, "objective": studies.OBJECTIVES, "scale": studies.SCALES}


@functools.cache
def _paper_file(name: str):
  """experiments/<name>.py, beside this file (experiments/ is not a package)."""
  path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
  spec = importlib.util.spec_from_file_location(f"experiments_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES)
  scale, model, objective = a["scale"], a["model"], a["objective"]
  unique, total = studies.tokens(scale, UNIQUE), studies.tokens(scale, TOTAL)
  if scale == "paper":
    return studies.with_run(_paper_file(PAPER_FILES[model]).get_config(), scale, objective,
                            studies.data_config(scale), unique, total)
  return studies.study_config(scale, objective, model=TWINS[scale][model], unique_tokens=unique,
                              total_tokens=total, batch_mult=BATCH_MULT[model])


def runs(scale="paper"):
  studies.check_scale(NAME, scale)
  return [studies.run_arg(model=m, objective=o, scale=scale)
          for m in MODELS for o in studies.OBJECTIVES]
