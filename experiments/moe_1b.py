"""Sparse study, "8B1A": an MoE of ~8B total, ~1B active parameters (configs/models.PAPER_8B1A).

The paper does not publish its expert count or top-k; ours: the dense 1B's attention, width (1792),
depth (26) and vocabulary, every FFN an MoE of 96 SwiGLU experts of width 592 (= the 1B's 4736 / 8),
top-8 softmax routing, no shared expert. A token's 8 experts match the dense 1B
FFN's compute (only a [1792, 96] router per layer is added), so 1B1A and 8B1A train at the same
FLOPs per token and differ only in parameters (12x the FFN's).
Parameters (Model.param_counts): 8,372,377,600 total; 1,090,607,104 active; 7,943,749,632 in
routed experts; 8,282,295,552 non-embedding.
Recipe as experiments/dense_1b.py (sequence 2048, global batch 256: the paper's batch follows the
~1B active size; AdamW + WSD, bf16, full remat; 1B unique tokens x 96 epochs); objectives ar and
mdm, one with --config.objectives=mdm. Default mesh: expert axis 8 (12 experts per chip), data
over the rest; the batch is split over both. Dropless dispatch built for TPU by default
(`dropless_gather`: each chip's assignments sorted by expert through megablox's grouped matmul
under shard_map, dlmscale/models/moe_tpu.py), so no token is dropped: compile mode (v5p-64,
data 4 x expert 8, 8 sequences per chip) fits it in 38.9 GiB per chip (ar), about what capacity
dispatch (factor 1.25, `--config.model.moe_dispatch=capacity`) needs (38.0 GiB), while plain
`dropless` needs 102 GiB of temporaries (XLA's TPU ragged_dot runs every expert on every token;
BENCHMARKS.md "Dropless MoE on TPU"):
  python -m dlmscale.main --config=experiments/moe_1b.py --mode=compile --topology=v5p-64

On a TPU VM (every host runs the same command):
  python -m dlmscale.main --config=experiments/moe_1b.py --workdir=/mnt/shared/runs/moe_1b

Data: as experiments/dense_1b.py (the configs/prepare_nl.py corpus; a larger one for 1B unique).
"""
from configs import models
from configs.sparse_study import study_config
from configs.studies import no_argument

GLOBAL_BATCH = 256


def get_config(arg=None):
  no_argument("moe_1b", arg, "choose the objective with --config.objectives=mdm; "
              "the sparse study's runs on C4: --config=experiments/sparse_dense.py:"
              "model=8B1A,objective=mdm,scale=paper")
  c = study_config(models.PAPER_8B1A, GLOBAL_BATCH, dict(data=-1, fsdp=1, tensor=1, expert=8))
  c.model.moe_dispatch = "dropless_gather"
  return c
