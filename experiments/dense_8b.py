"""Sparse study, "8B8A": dense 8B (38 layers, d_model 4096, 32 heads, FFN 11008).

Parameters (Model.param_counts): 7,896,483,328 total = active (dense); 7,690,581,504 non-embedding.
Recipe (PAPER.md): sequence 2048, global batch 1024 (the paper's batch above 5B), AdamW + WSD
(configs/optimizers.PAPER), bf16 compute, full remat. Data budget of the model-size study (the
sparse study states none): 1B unique tokens repeated 96 times (96B tokens, ~45.8k steps). Both
objectives by default; pick one with --config.objectives=mdm (or ar).
Default mesh: FSDP over the whole slice (params + Adam state are ~95 GB). Compile mode (v5p-128,
fsdp 64, 16 sequences per chip) fits it in 39.6 GiB per chip (BENCHMARKS.md "TPU compile"):
  python -m dlmscale.main --config=experiments/dense_8b.py --mode=compile --topology=v5p-128

On a TPU VM (every host runs the same command):
  python -m dlmscale.main --config=experiments/dense_8b.py --workdir=/mnt/shared/runs/dense_8b

Data: the English corpus of configs/prepare_nl.py (~23M tokens) is what ships; a 1B-unique run
needs a larger corpus, e.g. --config.data.sources='tfds:c4/en?data_dir=gs://BUCKET/tfds' (the
stream stops with a one-line error if unique_tokens exceeds the prepared tokens). The vocabulary
stays the paper's 50269 so the counts above hold whatever tokenizer fills it.
"""
from configs import meshes, models
from configs.sparse_study import study_config
from configs.studies import no_argument

GLOBAL_BATCH = 1024


def get_config(arg=None):
  no_argument("dense_8b", arg, "choose the objective with --config.objectives=mdm; "
              "the sparse study's runs on C4: --config=experiments/sparse_dense.py:"
              "model=8B8A,objective=mdm,scale=paper")
  return study_config(models.DENSE_8B, GLOBAL_BATCH, meshes.FSDP)
