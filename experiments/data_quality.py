"""Data quality (PAPER.md "Experiments", third row): 1B unique tokens of low, medium or high
quality text, repeated 96 times (96B tokens), AR vs masked diffusion. The crossover comes later
with higher-quality data.

Arguments: quality=low|medium|high, objective=ar|mdm, scale=paper|gpu|cpu (default:
quality=low,objective=ar,scale=paper); 6 runs a scale.

  python -m dlmscale.main \
      --config=experiments/data_quality.py:quality=high,objective=mdm,scale=cpu \
      --workdir=runs/data_quality-cpu-high-mdm

Sources, one corpus per level (each level has its own held-out split from the same source, so
compare AR with DLM within a level, as the paper's per-level curves do):
- paper: one web crawl bucketed by one quality classifier, supplied by the user as Parquet files
  with a `text` column, e.g. FineWeb documents by the FineWeb-Edu classifier's int_score (low:
  0-1, medium: 2, high: 3-5), at least 1B GPT-2 tokens each:
  files:/data/quality/{low,medium,high}/*.parquet (the `parquet` extra reads them; override
  with --config.data.sources=...).
- gpu / cpu: offline corpora of `python -m dlmscale.data.fetch nl`, ranked by what such
  classifiers reward (connected, explanatory, edited prose): low = the GCIDE dictionary (terse
  entries of headwords, pronunciations and sense fragments in markup, little connected text),
  medium = the Linux kernel documentation (real prose, but much of it option lists, tables and
  command output), high = the Python 3.11 documentation (edited tutorial and reference prose with
  worked examples, the "educational" text classifiers favour).
Model, batch and budget as experiments/crossover.py at unique=1B: PAPER_1B / GPU_17M / TINY, T =
96B / 18,874,368 / 3,145,728 tokens, U = 1B / 196,608 / 32,768 (paper / gpu / cpu). gpu: each
level is tokenized by its own SentencePiece (configs/prepare_nl.py's settings, trained on that
level); cpu: bytes, sequence 128, documents held out whole. A cpu run takes ~3 minutes.
"""
from configs import studies

NAME = "data_quality"
SCALES = studies.SCALES  # what a sweep may ask runs() for
LEVELS = ("low", "medium", "high")
SOURCES = {
    "paper": {q: f"files:/data/quality/{q}/*.parquet" for q in LEVELS},
    "offline": {"low": "gcide?cp1252_fallback=true", "medium": "linux_docs",
                "high": "python_docs"},
}
UNIQUE, TOTAL = 1, 96  # paper billions of tokens
CHOICES = {"quality": LEVELS, "objective": studies.OBJECTIVES, "scale": studies.SCALES}


def data(scale: str, quality: str) -> dict:
  if scale == "paper":
    return studies.data_config(scale, sources=SOURCES["paper"][quality])
  source = SOURCES["offline"][quality]
  if scale == "gpu":
    return studies.data_config(scale, sources=source)
  # The stdlib's held-out folders do not apply: these documents are pages and entry blocks.
  return studies.data_config(scale, sources=source, split_unit="document")


def get_config(arg=None):
  a = studies.parse_args(NAME, arg, CHOICES)
  scale = a["scale"]
  return studies.study_config(scale, a["objective"], model=studies.MODEL_1B[scale],
                              unique_tokens=studies.tokens(scale, UNIQUE),
                              total_tokens=studies.tokens(scale, TOTAL),
                              data=data(scale, a["quality"]))


def runs(scale="paper"):
  studies.check_scale(NAME, scale)
  return [studies.run_arg(quality=q, objective=o, scale=scale)
          for q in LEVELS for o in studies.OBJECTIVES]
