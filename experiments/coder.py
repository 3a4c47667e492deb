"""Code at scale (PAPER.md "Experiments", last row): the paper's 1.7B coder (GPT-NeoX tokens,
untied embeddings) trained on 10B unique Python tokens for ~1.5T tokens (150 epochs), AR vs
masked diffusion; the DLM coder overtakes the AR one. Score checkpoints on HumanEval / MBPP with
--mode=code.

Arguments: objective=ar|mdm, scale=paper|gpu|cpu (default: objective=ar,scale=paper); 2 runs a
scale.

  python -m dlmscale.main --config=experiments/coder.py:objective=mdm,scale=cpu \
      --workdir=runs/coder-cpu-mdm

Scales (150 epochs at each; the 1.7B's batch 512 is the paper's rule for 1.5-5B models):
| scale | model | data | total T | unique U | batch x seq | steps |
|---|---|---|---:|---:|---|---:|
| paper | PAPER_1P7B_CODER | The Stack's Python | 1.5T | 10B | 512 x 2048 | 1,430,511 |
| gpu | GPU_17M, untied | prepare_code.py | 157,286,400 | 1,048,576 | 64 x 512 | 4,800 |
| cpu | TINY, untied | stdlib bytes | 3,686,400 | 24,576 | 64 x 128 | 450 |
Paper data: configs/studies.STACK_PYTHON with GPT-NeoX tokens (NEOX_TOKENIZER); paper and gpu
data are decontaminated against HumanEval and MBPP (needs `python -m dlmscale.data.fetch
benchmarks`). Paper mesh: fsdp (check with --mode=compile --topology=v5p-64). The 1.7B has
1,732,895,744 parameters with GPT-NeoX's 50,277 pieces + mask (vocabulary padded to 50,304). A
cpu run takes ~3 minutes.
"""
from configs import meshes, models, studies

NAME = "coder"
SCALES = studies.SCALES  # what a sweep may ask runs() for
# (unique, total) tokens: 10B x 150 at paper scale; whole sequences and steps at each scale.
BUDGETS = {"paper": (10_000_000_000, 1_500_000_000_000), "gpu": (1_048_576, 157_286_400),
           "cpu": (24_576, 3_686_400)}
MODELS = {"paper": models.PAPER_1P7B_CODER, "gpu": dict(models.GPU_17M, tie_embeddings=False),
          "cpu": dict(models.TINY, tie_embeddings=False)}
BATCH_MULT = 2  # 1.5-5B parameters
CHOICES = {"objective": studies.OBJECTIVES, "scale": studies.SCALES}


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES)
  scale = a["scale"]
  unique, total = BUDGETS[scale]
  mesh = meshes.FSDP if scale == "paper" else meshes.DATA_PARALLEL
  return studies.study_config(scale, a["objective"], model=MODELS[scale], unique_tokens=unique,
                              total_tokens=total, batch_mult=BATCH_MULT, mesh=mesh,
                              data=studies.data_config(scale, "code"))


def runs(scale="paper"):
  studies.check_scale(NAME, scale)
  return [studies.run_arg(objective=o, scale=scale) for o in studies.OBJECTIVES]
