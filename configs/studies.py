"""What the paper's studies (experiments/<study>.py) share: scales, budgets, corpora, arguments.

A study file has `get_config(arg=None)`, one run (one objective) named by comma-separated
arguments, e.g. `--config=experiments/crossover.py:unique=0.5B,objective=mdm,scale=paper`
(unset arguments take their first listed value), and `runs(scale)`, the argument strings of
every run of the study at that scale. Each study comes at three scales of the same grid:

- paper: the authors' recipe (PAPER.md): the models of configs/models.py, bf16 compute over fp32
  parameters, full remat, sequence 2048, global batch 256 (x2 for 1.5-5B models, x4 above),
  optimizers.PAPER; GPT-2 tokens of C4 (C4_EN, GPT2_TOKENIZER below). Nothing at this size ships:
  the sources are what a user points at (the tokenizer file is theirs to download).
- gpu: one GPU, minutes per run: 17-98M-parameter twins (models.GPU_*), bf16, the English corpus
  of configs/prepare_nl.py (16k SentencePiece, sequence 512), batch 32, optimizers.GPU_SMALL.
- cpu: 2 CPU cores, minutes per run: 0.13-0.9M-parameter fp32 twins (models.TINY ...
  SMALL_CPU), the running Python's standard library as bytes (sequence 128, whole folders held
  out), batch 32, ~3M tokens, optimizers.CPU_FAST; as experiments/quickstart.py. A TINY run took
  234 s (crossover unique=0.5B, mdm, on 2 cores shared with other jobs); from BENCHMARKS.md's
  throughputs the larger twins should take up to ~10 minutes, the long run (5x the tokens) ~13.

Budgets keep the paper's names at every scale ("unique=0.5B") and are scaled by
TOKENS_PER_BILLION, so a run's epochs (T/U) are the paper's at every scale, and every budget is
whole sequences and whole steps. Runs that differ only in objective (or its noise rate) share
config.data, the batch, model, optimizer and mesh: one token stream (one fingerprint).

Evaluation points (validation NLL / ELBO, logged as eval/...): cpu and gpu every 1/16 of a run.
At paper scale at every epoch end, as the paper validates, for runs of 20-200 epochs; runs of
fewer epochs also every 1/20 of the run (>= 20 points), runs of more every 1/200 (not 480 epoch
evaluations). Benchmarks are not scored during training (for the DLM they would cost about as
much as training); score checkpoints with --mode=eval --config.eval.tasks=hellaswag,mmlu.
"""
import math

from configs import meshes, models, optimizers, prepare_code, prepare_nl
from dlmscale.config import default_config
from dlmscale.errors import ConfigError

SCALES = ("paper", "gpu", "cpu")
OBJECTIVES = ("ar", "mdm")
# What stands for the paper's 1B tokens: 384 sequences of 512 (gpu), 256 of 128 (cpu). The gpu
# crossover's 1-epoch budget (96 "B" = 18.9M tokens) then fits the ~23M-token English corpus.
TOKENS_PER_BILLION = {"paper": 1_000_000_000, "gpu": 196_608, "cpu": 32_768}
# The paper's "1B" and its twins (16.9M and 127k parameters).
MODEL_1B = {"paper": models.PAPER_1B, "gpu": models.GPU_17M, "cpu": models.TINY}
# Global batch of a ~1B model; studies multiply it as the paper does for larger ones.
BATCH = {"paper": 256, "gpu": 32, "cpu": 32}

# Paper-scale corpora. C4 English (~150B tokens: room for the 96B-unique budget; the paper
# validates on C4), streamed from the Hub by the hf source (needs the `hf` extra).
C4_EN = "hf:allenai/c4?name=en&split=train"
# Python for the coder: the Python files of The Stack (dedup; gated: accept its terms and log in
# with huggingface-cli). The unique budget needs >= 10B prepared tokens; the stream stops with
# a one-line error if it is short.
STACK_PYTHON = "hf:bigcode/the-stack-dedup?data_files=data/python/*.parquet&text_field=content"
# The paper's tokenizers, as tokenizer.json files the user downloads (gs:// paths work too), e.g.
# `huggingface-cli download openai-community/gpt2 tokenizer.json --local-dir /data/tokenizers/gpt2`
# and EleutherAI/gpt-neox-20b likewise; the mask id is appended to each.
GPT2_TOKENIZER = "hf:/data/tokenizers/gpt2/tokenizer.json"
NEOX_TOKENIZER = "hf:/data/tokenizers/gpt-neox-20b/tokenizer.json"

_NUMERICS = {
    "paper": dict(dtype="bfloat16", param_dtype="float32", remat="full"),
    "gpu": dict(dtype="bfloat16", param_dtype="float32", remat="none"),
    # bf16 matmuls are emulated, and slow, on CPU.
    "cpu": dict(dtype="float32", param_dtype="float32", remat="none"),
}
_TRAIN = {  # log_every / checkpoint_every at paper scale as configs/sparse_study.py
    "paper": dict(optimizers.PAPER, log_every=100, checkpoint_every=1000),
    "gpu": dict(optimizers.GPU_SMALL, log_every=25, checkpoint_every=500),
    "cpu": dict(optimizers.CPU_FAST, log_every=50, checkpoint_every=250),
}
_EVAL = {
    "paper": {},  # the defaults: 256 held-out sequences, 8 mask draws for the DLM bound
    "gpu": dict(batch_size=64, mask_samples=8, max_sequences=512),
    # Half the quickstart's rows and mask draws: 16 evaluations stay a small part of a run,
    # at a DLM bound stderr of ~0.04 nats.
    "cpu": dict(batch_size=64, mask_samples=4, max_sequences=128),
}
CURVE_POINTS = 16  # evaluations per cpu / gpu run
MIN_POINTS, MAX_POINTS = 20, 200  # paper scale


def parse_args(study: str, arg: str | None, choices: dict, only_with: dict | None = None) -> dict:
  """`name=value,...` -> {name: value} for every name in `choices` (name -> allowed values);
  unset names take their first value. `only_with` maps a name to the (other name, value) it
  needs. Anything else raises a one-line ConfigError listing what is valid."""
  given = {}
  for item in (s.strip() for s in (arg or "").split(",")):
    if not item:
      continue
    name, eq, value = (s.strip() for s in item.partition("="))
    if not eq:
      raise ConfigError(f"{study}: argument {item!r} is not name=value: use e.g. "
                        f"{run_arg(**{n: v[0] for n, v in choices.items()})}")
    if name not in choices:
      raise ConfigError(f"{study}: unknown argument {name!r}: use one of {', '.join(choices)}")
    if name in given:
      raise ConfigError(f"{study}: argument {name!r} is given twice: give it once")
    if value not in choices[name]:
      raise ConfigError(f"{study}: unknown value {name}={value!r}: use one of "
                        f"{', '.join(choices[name])}")
    given[name] = value
  values = {name: given.get(name, allowed[0]) for name, allowed in choices.items()}
  for name, (other, needed) in (only_with or {}).items():
    if name in given and values[other] != needed:
      raise ConfigError(f"{study}: {name} applies only with {other}={needed}, not "
                        f"{other}={values[other]}: drop {name}")
  return values


def run_arg(**values) -> str:
  """The argument string of one run, e.g. run_arg(unique='1B', scale='cpu')."""
  return ",".join(f"{k}={v}" for k, v in values.items())


def check_scale(study: str, scale: str) -> str:
  """`scale`, or a one-line ConfigError naming the scales."""
  return parse_args(study, f"scale={scale}", {"scale": SCALES})["scale"]


def no_argument(name: str, arg: str | None, hint: str) -> None:
  """For experiment files that are one fixed run: any argument is a one-line ConfigError."""
  if arg:
    raise ConfigError(f"{name} takes no argument (got {arg!r}): {hint}")


def billions(name: str) -> float:
  """'0.5B' -> 0.5."""
  return float(name.removesuffix("B"))


def tokens(scale: str, paper_billions: float) -> int:
  """The scale's stand-in for `paper_billions` x 1e9 tokens."""
  return round(paper_billions * TOKENS_PER_BILLION[scale])


def data_config(scale: str, corpus: str = "nl", **overrides) -> dict:
  """Every config.data key for a corpus ('nl' or 'code') at a scale, so runs on one corpus have
  equal config.data whatever config they started from. Budgets are set by with_run."""
  d = dict(default_config().data)
  if scale == "paper":
    nl = corpus == "nl"
    d.update(sources=C4_EN if nl else STACK_PYTHON,
             tokenizer=GPT2_TOKENIZER if nl else NEOX_TOKENIZER,
             decontaminate="" if nl else "humaneval,mbpp", seq_len=2048,
             # 0.1% of documents is ~150M held-out tokens, far more than evaluation reads.
             val_fraction=0.001, workers=16)
  elif scale == "gpu":
    d.update((prepare_nl if corpus == "nl" else prepare_code).get_config().data)
  else:  # both corpora: the stdlib as bytes, as experiments/quickstart.py
    d.update(split_unit="directory", seq_len=128)
  d.update(overrides)
  return d


def study_config(scale: str, objective: str, *, model: dict, unique_tokens: int,
                 total_tokens: int, batch_mult: int = 1, mesh: dict = meshes.DATA_PARALLEL,
                 data: dict | None = None, rate: str | None = None):
  """A full config of one study run: the scale's numerics, optimizer and batch (x batch_mult)."""
  c = default_config()
  c.model.update(model)
  c.model.update(_NUMERICS[scale])
  c.train.update(_TRAIN[scale])
  c.train.global_batch = BATCH[scale] * batch_mult
  c.mesh.update(mesh)
  return with_run(c, scale, objective, data or data_config(scale), unique_tokens, total_tokens,
                  rate)


def with_run(c, scale: str, objective: str, data: dict, unique_tokens: int, total_tokens: int,
             rate: str | None = None):
  """`c` made one run: one objective (with its noise rate), the data and budget, eval points."""
  c.objectives = (objective,)
  if rate is not None:
    c.objective_args[objective].rate = float(rate)
  c.data.update(data)
  c.data.update(unique_tokens=unique_tokens, total_tokens=total_tokens)
  c.eval.update(_EVAL[scale])
  steps = total_tokens // (c.train.global_batch * c.data.seq_len)
  if scale == "paper":
    epochs = steps * c.train.global_batch / (unique_tokens // c.data.seq_len)
    c.eval.at_epochs = epochs <= MAX_POINTS
    points = MIN_POINTS if epochs < MIN_POINTS else MAX_POINTS if epochs > MAX_POINTS else 0
  else:
    points = CURVE_POINTS
  c.eval.every = math.ceil(steps / points) if points else 0
  return c


NOISE_RATES = ("0.1", "0.3", "0.5", "0.7", "0.9")


def noise_study(name: str, noisy: str):
  """(get_config, runs) of a noise study: `noisy` (an AR objective with a `rate`) at NOISE_RATES,
  plus plain AR and masked diffusion, at the 1B unique x 96 epochs budget of the 1B model."""
  choices = {"objective": (noisy,) + OBJECTIVES, "rate": NOISE_RATES, "scale": SCALES}

  def get_config(arg=None):
    a = parse_args(name, arg, choices, only_with={"rate": ("objective", noisy)})
    scale, objective = a["scale"], a["objective"]
    return study_config(scale, objective, model=MODEL_1B[scale], unique_tokens=tokens(scale, 1),
                        total_tokens=tokens(scale, 96),
                        rate=a["rate"] if objective == noisy else None)

  def runs(scale="paper"):
    check_scale(name, scale)
    return ([run_arg(objective=noisy, rate=r, scale=scale) for r in NOISE_RATES]
            + [run_arg(objective=o, scale=scale) for o in OBJECTIVES])

  return get_config, runs
