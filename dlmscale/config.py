"""The config schema: defaults every experiment starts from, and validation with one-line errors.

It sits above the components whose settings it checks (objectives, models, parallel, evaluation),
none of which imports it.
"""
from __future__ import annotations

import difflib
import json

import ml_collections
import numpy as np

from dlmscale import objectives, profiling
from dlmscale.errors import ConfigError
from dlmscale.evaluation.suite import check_eval_config
from dlmscale.models.transformer import REMAT_POLICIES, ModelConfig, moe_config_problem
from dlmscale.parallel import DEFAULT_RULES
from dlmscale.sampling.ar import check_sampling
from dlmscale.sampling.dlm import REMASKING
from dlmscale.sampling.dlm_cache import check_fast_options

SCHEDULES = ("wsd", "cosine", "constant")


def default_config() -> ml_collections.ConfigDict:
  """Every key a run understands, with defaults; experiments override values, never add keys."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Each objective is trained into <workdir>/<objective> on the same token stream.
  c.objectives = ("ar",)
  # Each registered objective's arguments, e.g. objective_args.mdm.weighting.
  c.objective_args = ml_collections.ConfigDict(
      {n: dict(objectives.DEFAULT_ARGS[n]) for n in objectives.names()})

  c.model = ml_collections.ConfigDict(dict(
      vocab_size=0,  # 0: the tokenizer's vocabulary rounded up to vocab_multiple
      vocab_multiple=64, num_layers=2, d_model=64, num_heads=4, num_kv_heads=0, head_dim=0,
      d_ff=192, tie_embeddings=True, rope_base=10000.0, norm_eps=1e-6, init_std=0.02,
      qk_norm=True, dtype="bfloat16", param_dtype="float32", scan_layers=True,
      remat="none",  # none, full, dots, dots_no_batch, minimal (models/transformer.py)
      attention="auto",  # training attention: auto (cuDNN on GPU, chunked on CPU, splash on TPU),
      # einsum, chunked, xla, cudnn, splash (models/layers.py attention_impl)
      dropout_attention=0.0, dropout_residual=0.0, dropout_mlp=0.0,
      # Mixture of experts (num_experts 0: dense); see dlmscale/models/moe.py.
      num_experts=0, experts_per_token=2, moe_every=1, moe_d_ff=0, num_shared_experts=0,
      router="softmax", renormalize_topk=False, moe_dispatch="dropless", capacity_factor=1.25,
      load_balance_coef=0.01, router_z_coef=0.001,
      # A local Hugging Face Qwen3 / Llama / Qwen3-MoE directory to start from ('' = random
      # init); it must match this model exactly (see dlmscale/hf_import.py).
      init_from=""))

  # Preparation (what the prepared data holds): sources are spec strings joined by ';'.
  c.data = ml_collections.ConfigDict(dict(
      sources="python_stdlib", tokenizer="byte", on_decode_error="error", decontaminate="",
      decontaminate_ngram=13, seq_len=128, val_fraction=0.02, split_seed=0,
      split_unit="document",  # or "directory": hold out whole folders
      # '' = a cache directory named by the preparation's content hash ($DLMSCALE_DATA_DIR).
      prepared_dir="", workers=1, records_per_shard=65536,
      # Training stream: budget U (unique), T (total), order seed, Grain worker processes.
      unique_tokens=1_000_000, total_tokens=4_000_000, seed=0, loader_workers=0,
      # Train splits up to this size are read into memory once; larger ones row by row.
      in_memory_mb=1024))

  c.train = ml_collections.ConfigDict(dict(
      global_batch=32, grad_accum=1, lr=3e-3, min_lr=3e-4, schedule="wsd", warmup_steps=50,
      decay_fraction=0.2, b1=0.9, b2=0.95, weight_decay=0.1, grad_clip=1.0, adam_eps=1e-8,
      log_every=25, checkpoint_every=500, keep_checkpoints=3, async_checkpointing=True,
      peak_flops_per_device=0.0,  # 0: look the chip up; CPU has no known peak
      # Resuming: a damaged latest checkpoint is an error unless restore_fallback (then it is
      # moved aside and the previous one used); a checkpoint of other data likewise.
      restore_fallback=False, allow_data_change=False,
      # Observability: a jax.profiler trace of steps START:END into <workdir>/profile ('' off);
      # a Weights & Biases project mirroring metrics.jsonl ('' off; the 'wandb' extra; offline
      # with WANDB_MODE=offline).
      profile_steps="", wandb_project=""))

  # max_sequences: evenly spaced validation rows (None: all of them).
  c.eval = ml_collections.ConfigDict(dict(
      batch_size=32, mask_samples=8, max_sequences=256,
      # Benchmarks (dlmscale/evaluation/tasks): names such as ('hellaswag', 'arc_easy'); limit 0 =
      # every example; a DLM scores each option with `dlm_estimator` and `dlm_samples` mask draws.
      tasks=(), num_fewshot=0, limit=0, dlm_estimator="fixed_count", dlm_samples=128,
      cfg_scale=0.0, task_paths="",  # task_paths: 'task=path,...' to read a task from elsewhere
      # Scoring window in tokens (0: data.seq_len, what the model was trained on). Longer windows
      # let long benchmark items be scored, with RoPE beyond the trained length.
      max_length=0,
      # Evaluation during training: every `every` steps (0: never) and at epoch boundaries.
      every=0, at_epochs=False))

  # Generation (--mode=sample): AR decoding with a KV cache, DLM by iterative unmasking.
  c.sample = ml_collections.ConfigDict(dict(
      prompts=("def fibonacci(n):",), max_new_tokens=128, num_samples=1, temperature=0.0,
      top_k=0, top_p=1.0, stop=(), seed=0,
      steps=0,  # DLM: unmasking steps (0: one token per step)
      block_length=0,  # DLM: semi-autoregressive block length (0: the whole answer is one block)
      remasking="low_confidence",  # DLM: or "random"
      # DLM, faster: commit every id more confident than `threshold` (>= 1 per step; 0: off, the
      # `steps` schedule), and a block-wise approximate KV cache ("prefix" or "dual"; "none")
      # refreshed at each block's start and every `refresh_every` steps (0: once per block).
      threshold=0.0, cache="none", refresh_every=0))

  # Code benchmarks (--mode=code): pass@k over sandboxed executions. Greedy decoding gives one
  # distinct sample; for pass@10 sample (e.g. sample.temperature=0.8, num_samples=20).
  c.code = ml_collections.ConfigDict(dict(
      benchmark="humaneval", limit=0, num_samples=1, pass_at_k=(1,), timeout_s=10.0,
      memory_mb=1024))

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
  c.rules = tuple((k, v) for k, v in DEFAULT_RULES)
  return c


def _key_paths(cfg, prefix="") -> set[str]:
  out = set()
  for key, value in cfg.items():
    path = f"{prefix}{key}"
    out.add(path)
    if isinstance(value, ml_collections.ConfigDict) and path != "objective_args":
      out |= _key_paths(value, path + ".")
  return out


def validate(cfg: ml_collections.ConfigDict) -> None:
  """Raises ConfigError (one line: problem and fix) for anything a run would trip over later."""
  known = _key_paths(default_config())
  for path in sorted(_key_paths(cfg) - known):
    close = difflib.get_close_matches(path, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown config key {path!r}{hint}: remove it or use a key from "
                      "dlmscale.config.default_config()")
  objs = objective_names(cfg)
  if not objs:
    raise ConfigError("config.objectives is empty: name at least one, e.g. ('ar', 'mdm')")
  for name in set(objs) | set(cfg.objective_args):
    objectives.resolve_args(name, cfg.objective_args.get(name), mask_id=0)
  if cfg.model.remat not in REMAT_POLICIES:
    raise ConfigError(f"unknown model.remat {cfg.model.remat!r}: use one of {list(REMAT_POLICIES)}")
  if cfg.model.d_model % cfg.model.num_heads and not cfg.model.head_dim:
    raise ConfigError(f"model.d_model={cfg.model.d_model} is not divisible by model.num_heads="
                      f"{cfg.model.num_heads}: change one or set model.head_dim")
  kv = cfg.model.num_kv_heads or cfg.model.num_heads
  if cfg.model.num_heads % kv:
    raise ConfigError(f"model.num_heads={cfg.model.num_heads} is not a multiple of "
                      f"model.num_kv_heads={kv}")
  problem = moe_config_problem(cfg.model)
  if problem:
    raise ConfigError(problem)
  if cfg.model.init_from.rstrip("/").endswith((".safetensors", ".json", ".bin")):
    raise ConfigError(f"model.init_from={cfg.model.init_from!r} names a file: point it at the "
                      "Hugging Face model directory that holds config.json and the safetensors")
  experts, expert_axis = cfg.model.num_experts, cfg.mesh.get("expert", 1)
  if experts and expert_axis > 1 and experts % expert_axis:
    raise ConfigError(f"model.num_experts={experts} is not divisible by mesh.expert="
                      f"{expert_axis}: make the expert count a multiple of the expert axis")
  t = cfg.train
  if t.schedule not in SCHEDULES:
    raise ConfigError(f"unknown train.schedule {t.schedule!r}: use one of {list(SCHEDULES)}")
  if t.global_batch % t.grad_accum:
    raise ConfigError(f"train.global_batch={t.global_batch} is not divisible by "
                      f"train.grad_accum={t.grad_accum}")
  for key in ("log_every", "checkpoint_every", "keep_checkpoints", "global_batch", "grad_accum"):
    if t[key] < 1:
      raise ConfigError(f"train.{key} must be >= 1, got {t[key]}")
  if not 0 <= t.decay_fraction <= 1:
    raise ConfigError(f"train.decay_fraction must be in [0, 1], got {t.decay_fraction}")
  profiling.parse_window(t.profile_steps)
  _check_numbers(cfg)
  check_eval_config(cfg)


def _check_numbers(cfg) -> None:
  """Values that would only fail after the run started (a NaN learning rate diverges at the first
  step) are refused before anything is written."""
  t, m = cfg.train, cfg.model
  for key in ("lr", "min_lr", "b1", "b2", "weight_decay", "grad_clip", "adam_eps"):
    if not np.isfinite(t[key]) or t[key] < 0:
      raise ConfigError(f"train.{key} must be a finite number >= 0, got {t[key]}")
  if t.lr <= 0:
    raise ConfigError(f"train.lr must be > 0, got {t.lr}")
  if not (0 <= t.b1 < 1 and 0 <= t.b2 < 1):
    raise ConfigError(f"train.b1 and train.b2 must be in [0, 1), got {t.b1}, {t.b2}")
  if t.warmup_steps < 0:
    raise ConfigError(f"train.warmup_steps must be >= 0, got {t.warmup_steps}")
  for site in ("attention", "residual", "mlp"):
    rate = m[f"dropout_{site}"]
    if not 0 <= rate < 1:
      raise ConfigError(f"model.dropout_{site} must be in [0, 1), got {rate}")
  for key in ("unique_tokens", "total_tokens", "seq_len"):
    if cfg.data[key] < 1:
      raise ConfigError(f"data.{key} must be >= 1, got {cfg.data[key]}")
  prompts = (cfg.sample.prompts,) if isinstance(cfg.sample.prompts, str) else cfg.sample.prompts
  if any(not isinstance(p, str) or not p for p in prompts):
    raise ConfigError("sample.prompts holds an empty prompt: give every prompt some text, e.g. "
                      "--config.sample.prompts=\"('def f(x):',)\"")
  sp = cfg.sample
  try:  # the sampler's own checks, so a bad sample.* fails when the config is loaded
    check_sampling(sp.temperature, sp.top_k, sp.top_p)
    if sp.remasking not in REMASKING:
      raise ConfigError(f"unknown remasking {sp.remasking!r}: use one of {list(REMASKING)}")
    check_fast_options(threshold=sp.threshold, cache=sp.cache, refresh_every=sp.refresh_every,
                       steps=sp.steps, remasking=sp.remasking)
  except ConfigError as e:
    raise ConfigError(f"config sample.*: {e}") from None
  if cfg.sample.max_new_tokens < 1 or cfg.sample.num_samples < 1:
    raise ConfigError("sample.max_new_tokens and sample.num_samples must be >= 1, got "
                      f"{cfg.sample.max_new_tokens}, {cfg.sample.num_samples}")


def objective_names(cfg) -> tuple[str, ...]:
  """config.objectives as a tuple; 'ar,mdm' (a plain command-line override) is split on commas."""
  names = (cfg.objectives,) if isinstance(cfg.objectives, str) else tuple(cfg.objectives)
  return tuple(n.strip() for name in names for n in name.split(",") if n.strip())


def model_config(cfg, tokenizer_vocab: int) -> ModelConfig:
  """The static ModelConfig; vocab_size 0 means the tokenizer's, rounded up to vocab_multiple."""
  m = dict(cfg.model)
  multiple = m.pop("vocab_multiple")
  m.pop("init_from")  # where the parameters start, not the network's shape
  if not m["vocab_size"]:
    m["vocab_size"] = -(-tokenizer_vocab // multiple) * multiple
  if m["vocab_size"] < tokenizer_vocab:
    raise ConfigError(f"model.vocab_size={m['vocab_size']} is smaller than the tokenizer's "
                      f"{tokenizer_vocab} ids: raise it or set it to 0 (automatic)")
  return ModelConfig(**m)


def changed_keys(old: dict, new: dict, allowed: tuple[str, ...] = ()) -> list[str]:
  """Dotted keys whose values differ between two plain (JSON) configs, except those equal to or
  under an `allowed` entry ('train.log_every', or a section prefix such as 'eval.').

  A config saved by an older dlmscale lacks keys added since: there they count as their defaults
  (what that run did), and keys no longer in the schema are ignored."""
  defaults = _flatten(json.loads(to_json(default_config())))
  old = {k: v for k, v in _flatten(old).items() if k in defaults or k.startswith("objective_args.")}
  old = {**defaults, **old}
  new = _flatten(new)
  ok = lambda k: any(k == a or (a.endswith(".") and k.startswith(a)) for a in allowed)
  return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k) and not ok(k))


def _flatten(tree, prefix="") -> dict:
  if not isinstance(tree, dict):
    return {prefix[:-1]: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flatten(v, f"{prefix}{k}."))
  return out


def to_json(cfg) -> str:
  """Canonical JSON of the config (tuples as lists), used to detect a changed config on resume."""
  def plain(x):
    if isinstance(x, ml_collections.ConfigDict):
      return {k: plain(v) for k, v in sorted(x.items())}
    if isinstance(x, (list, tuple)):
      return [plain(v) for v in x]
    if isinstance(x, np.generic):
      return x.item()
    return x
  return json.dumps(plain(cfg), sort_keys=True)
