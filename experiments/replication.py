"""The small-scale replication of the paper's three central claims, as one sweep (README,
"Replication"): the crossover grid at two model sizes, and AR noise at the smallest budget.

1. crossover vs unique data (PAPER.md "Claim", Figure A's grid): unique=0.5B / 1B / 1.5B / 10B /
   96B (192 / 96 / 64 / 9.6 / 1 epochs of the same total), AR vs masked diffusion; five budgets
   per objective and size are what the data-potential fit (R*, four parameters) needs;
2. model size: the same grid with the next model of experiments/model_size.py ("2B": its twin,
   at the paper's doubled batch); the crossover should come earlier for the larger model;
3. noise: AR + input masking and AR + dropout at rates 0.1 / 0.5 / 0.9 at unique=0.5B (192
   epochs), against that budget's AR and DLM runs: noise helps AR but does not close the gap.

Arguments: unique=0.5B|1B|1.5B|10B|96B, model=1B|2B, objective=ar|mdm|ar_input_mask|ar_dropout,
rate=0.1|0.5|0.9 (noise objectives only), scale=cpu|gpu|paper (default cpu: this file exists to
be run here). runs(scale) gives 26 runs. Every run is experiments/crossover.py's recipe (same data
config, total tokens, budgets, optimizer, evaluation points); the model=1B runs with ar or mdm are
exactly crossover.py's runs.

  python -m dlmscale.main --mode=sweep --study=experiments/replication.py --scale=cpu \
      --workdir=runs/replication
  python -m dlmscale.main --mode=analyze --runs=runs/replication --out=runs/replication/analysis
"""
from configs import models, studies
from dlmscale.errors import ConfigError

NAME = "replication"
SCALES = ("cpu", "gpu", "paper")
UNIQUE = ("0.5B", "1B", "1.5B", "10B", "96B")
TOTAL = 96  # paper billions of tokens
SIZES = ("1B", "2B")
BATCH_MULT = {"1B": 1, "2B": 2}  # the paper's batch for 1.5-5B models
NOISE = ("ar_input_mask", "ar_dropout")
RATES = ("0.1", "0.5", "0.9")
CHOICES = {"unique": UNIQUE, "model": SIZES, "objective": studies.OBJECTIVES + NOISE,
           "rate": RATES, "scale": SCALES}


SECOND_MODEL = {"paper": models.DENSE_2B, "gpu": models.GPU_34M, "cpu": models.CPU_260K}


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES)
  objective, scale = a["objective"], a["scale"]
  noisy = objective in NOISE
  given = {item.partition("=")[0].strip() for item in (arg or "").split(",")}
  if noisy and (a["unique"] != UNIQUE[0] or a["model"] != SIZES[0]):
    raise ConfigError(f"{NAME}: the noise runs are at unique={UNIQUE[0]},model={SIZES[0]}: drop "
                      "unique= and model=")
  if not noisy and "rate" in given:
    raise ConfigError(f"{NAME}: rate applies only with objective=ar_input_mask or ar_dropout: "
                      "drop rate")
  model = studies.MODEL_1B[scale] if a["model"] == "1B" else SECOND_MODEL[scale]
  return studies.study_config(
      scale, objective, model=model,
      unique_tokens=studies.tokens(scale, studies.billions(a["unique"])),
      total_tokens=studies.tokens(scale, TOTAL), batch_mult=BATCH_MULT[a["model"]],
      rate=a["rate"] if noisy else None)


def runs(scale="cpu"):
  if scale not in SCALES:
    raise ConfigError(f"{NAME}: unknown scale {scale!r}: use one of {', '.join(SCALES)}")
  grid = [studies.run_arg(unique=u, model=m, objective=o, scale=scale)
          for m in SIZES for u in UNIQUE for o in studies.OBJECTIVES]
  noise = [studies.run_arg(objective=o, rate=r, scale=scale) for o in NOISE for r in RATES]
  return grid + noise
