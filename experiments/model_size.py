"""Model size (PAPER.md "Experiments", fourth row): 1B unique tokens repeated 96 times (96B
tokens) for models of 1B, 2B, 4B and 8B parameters, AR vs masked diffusion. The crossover comes
earlier for larger models (the 8B DLM: 55% HellaSwag vs AR's 40%).

Arguments: model=1B|2B|4B|8B, objective=ar|mdm, scale=paper|gpu|cpu (default:
model=1B,objective=ar,scale=paper); 8 runs a scale. At cpu and gpu scale the names stand for
four increasing sizes that roughly double like the paper's.

  python -m dlmscale.main --config=experiments/model_size.py:model=8B,objective=mdm,scale=cpu \
      --workdir=runs/model_size-cpu-8B-mdm

Scales (configs/studies.py; configs/models.py has the parameter counts):
| model | paper | gpu | cpu | batch |
|---|---|---|---|---|
| 1B | PAPER_1B (1.09B) | GPU_17M | TINY (127k) | 256 / 32 / 32 |
| 2B | DENSE_2B (~2.0B) | GPU_34M | CPU_260K | 512 / 64 / 64 |
| 4B | DENSE_4B (~4.0B) | GPU_60M | CPU_470K | 512 / 64 / 64 |
| 8B | DENSE_8B (7.9B) | GPU_98M | SMALL_CPU (894k) | 1024 / 128 / 128 |
The batch follows the paper's rule (x2 for 1.5-5B, x4 above 5B) at every scale, so larger models
take fewer steps over the same tokens: T = 96B / 18,874,368 / 3,145,728 and U = 1B / 196,608 /
32,768 tokens (paper / gpu / cpu) for every size, sequence 2048 / 512 / 128. Paper meshes: the
1B data-parallel (as experiments/dense_1b.py), the others fsdp (as experiments/dense_8b.py;
check the 2B and 4B with --mode=compile --topology=v5p-64). model=1B is the crossover study's
unique=1B run and model=8B the sparse study's 8B8A. A cpu run takes 3 (1B) to ~10 (8B) minutes.
"""
from configs import meshes, models, studies

NAME = "model_size"
SCALES = studies.SCALES  # what a sweep may ask runs() for
SIZES = ("1B", "2B", "4B", "8B")
MODELS = {
    "paper": dict(zip(SIZES, (models.PAPER_1B, models.DENSE_2B, models.DENSE_4B,
                              models.DENSE_8B))),
    "gpu": dict(zip(SIZES, (models.GPU_17M, models.GPU_34M, models.GPU_60M, models.GPU_98M))),
    "cpu": dict(zip(SIZES, (models.TINY, models.CPU_260K, models.CPU_470K, models.SMALL_CPU))),
}
BATCH_MULT = {"1B": 1, "2B": 2, "4B": 2, "8B": 4}
UNIQUE, TOTAL = 1, 96  # paper billions of tokens
CHOICES = {"model": SIZES, "objective": studies.OBJECTIVES, "scale": studies.SCALES}


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES)
  scale, size = a["scale"], a["model"]
  mesh = meshes.FSDP if scale == "paper" and size != "1B" else meshes.DATA_PARALLEL
  return studies.study_config(scale, a["objective"], model=MODELS[scale][size],
                              unique_tokens=studies.tokens(scale, UNIQUE),
                              total_tokens=studies.tokens(scale, TOTAL),
                              batch_mult=BATCH_MULT[size], mesh=mesh)


def runs(scale="paper"):
  studies.check_scale(NAME, scale)
  return [studies.run_arg(model=m, objective=o, scale=scale)
          for m in SIZES for o in studies.OBJECTIVES]
