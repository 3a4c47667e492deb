"""Sparse study, "1B1A": the paper's dense 1B (26 layers, d_model 1792, 14 heads, FFN 4736).

Parameters (Model.param_counts): 1,086,134,272 total = active (dense); 996,052,224 non-embedding.
Recipe (PAPER.md): sequence 2048, global batch 256, AdamW + WSD (configs/optimizers.PAPER), bf16
compute, full remat. Data budget of the model-size study (the sparse study states none): 1B unique
tokens repeated 96 times (96B tokens, ~183k steps). Both objectives by default; pick one with
--config.objectives=mdm (or ar). Default mesh: data-parallel over the slice: BENCHMARKS.md "TPU
compile" fits it on a v5p-64 (27.4 GiB per chip), while fsdp there needs 198 GiB of temporaries.

On a TPU VM (every host runs the same command):
  python -m dlmscale.main --config=experiments/dense_1b.py --workdir=/mnt/shared/runs/dense_1b

Data: the English corpus of configs/prepare_nl.py (~23M tokens) is what ships; a 1B-unique run
needs a larger corpus, e.g. --config.data.sources='tfds:c4/en?data_dir=gs://BUCKET/tfds' (the
stream stops with a one-line error if unique_tokens exceeds the prepared tokens). The vocabulary
stays the paper's 50269 so the counts above hold whatever tokenizer fills it.
"""
from configs import meshes, models
from configs.sparse_study import study_config
from configs.studies import no_argument

GLOBAL_BATCH = 256


def get_config(arg=None):
  no_argument("dense_1b", arg, "choose the objective with --config.objectives=mdm; "
              "the sparse study's runs on C4: --config=experiments/sparse_dense.py:"
              "model=1B1A,objective=mdm,scale=paper")
  return study_config(models.PAPER_1B, GLOBAL_BATCH, meshes.DATA_PARALLEL)
