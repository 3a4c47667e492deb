"""One place assembles an experiment: for training, for compiling, for evaluating a checkpoint.

`build_step` wires model, optimizer, schedule, shardings and the jitted train step for an objective
on a mesh; `build_experiment` adds the prepared corpus and token stream (training, evaluation);
compile mode calls `build_step` alone, over libtpu's devices, without data. `load_model` restores
a checkpoint into a LoadedModel for every evaluator and sampler.
"""
from __future__ import annotations

import dataclasses

import jax
from etils import epath

from dlmscale import checkpoint as ckpt_lib
from dlmscale import config as config_lib
from dlmscale import flops, hf_import, objectives, optim, parallel, train
from dlmscale.data import TokenStream, ensure_prepared
from dlmscale.data.tokenizers import get_tokenizer, needs_training
from dlmscale.errors import CheckpointError, ConfigError, DlmscaleError
from dlmscale.evaluation.loaded import LoadedModel
from dlmscale.models.model import Model, build_model


@dataclasses.dataclass
class Step:
  """The sharded train step of one objective and everything it is built from."""
  model: Model
  mesh: object
  optimizer: object
  schedule: object
  shardings: dict
  batch_sharding: object
  step_fn: object
  flops_per_token: float


@dataclasses.dataclass
class Experiment(Step):
  """A run of one objective: its step plus the config, corpus and token stream it trains on."""
  cfg: object = None
  objective: str = ""
  stream: TokenStream = None
  corpus: object = None


def make_stream(cfg, prepared, local_rows: tuple[int, int] | None = None) -> TokenStream:
  """The config's token stream; depends on the data config and global batch, nothing else."""
  d = cfg.data
  split = prepared.train
  if split.nbytes <= d.in_memory_mb * 2**20:
    # Read once: a batch is then a microsecond gather instead of milliseconds of record reads,
    # which on small models is the difference between hiding the pipeline and waiting on it.
    split = split.to_numpy()
  return TokenStream(split, unique_tokens=d.unique_tokens, total_tokens=d.total_tokens,
                     global_batch=cfg.train.global_batch, seed=d.seed, local_rows=local_rows)


def check_batch_fits_mesh(cfg, mesh) -> int:
  """The data-parallel size; ConfigError when a microbatch does not split over it."""
  dp = parallel.data_parallel_size(mesh, tuple(cfg.rules))
  micro = cfg.train.global_batch // cfg.train.grad_accum
  if micro % dp:
    raise ConfigError(
        f"batch per microbatch {micro} (train.global_batch / train.grad_accum) is not divisible "
        f"by the {dp} data-parallel devices of mesh {dict(mesh.shape)}: change the batch or mesh")
  return dp


def build_step(cfg, objective: str, mesh, *, vocab_size: int, mask_id: int,
               num_steps: int) -> Step:
  """The jitted, sharded train step of `objective` on `mesh` (no data needed)."""
  rules = tuple(cfg.rules)
  check_batch_fits_mesh(cfg, mesh)
  model = build_model(config_lib.model_config(cfg, vocab_size))
  optimizer = optim.make_optimizer(cfg.train, num_steps, model.logical_axes)
  schedule = optim.make_schedule(cfg.train, num_steps)
  shardings = train.state_shardings(model, optimizer, mesh, rules)
  args = objectives.resolve_args(objective, cfg.objective_args.get(objective), mask_id)
  loss_fn = train.make_loss_fn(model, objectives.get(objective), args)
  step = train.make_train_step(loss_fn, optimizer, schedule, grad_accum=cfg.train.grad_accum,
                               microbatch_sharding=train.microbatch_sharding(mesh, rules),
                               rules=rules)
  b_sh = parallel.batch_sharding(mesh, rules)
  return Step(model=model, mesh=mesh, optimizer=optimizer, schedule=schedule,
              shardings=shardings, batch_sharding=b_sh,
              step_fn=train.compile_step(step, shardings, b_sh),
              flops_per_token=flops.train_flops_per_token(
                  model.cfg, cfg.data.seq_len, causal=objectives.kind_of(objective) == "ar"))


def tokenizer_ids(cfg) -> tuple[int, int]:
  """The tokenizer's size and mask id without preparing the corpus; a tokenizer trained on the
  corpus (or a file only on the training machine) falls back on model.vocab_size, the mask id then
  only naming a constant in the program (compile mode, the planner)."""
  spec = cfg.data.tokenizer
  try:
    if not needs_training(spec):
      tok = get_tokenizer(spec)
      return int(tok.vocab_size), int(tok.mask_id)
  except (DlmscaleError, OSError):  # e.g. a tokenizer file only on the training machine
    pass
  if not cfg.model.vocab_size:
    raise ConfigError(f"tokenizer {spec!r} is not available before preparation: set "
                      "model.vocab_size to build the step without data")
  return int(cfg.model.vocab_size), int(cfg.model.vocab_size) - 1


def build_experiment(cfg, objective: str, devices=None) -> Experiment:
  """Validates cfg, prepares the corpus if needed, and assembles the run of `objective`."""
  config_lib.validate(cfg)
  corpus = ensure_prepared(cfg.data)
  mesh = parallel.make_mesh(dict(cfg.mesh), devices)
  check_batch_fits_mesh(cfg, mesh)
  b_sh = parallel.batch_sharding(mesh, tuple(cfg.rules))
  stream = make_stream(cfg, corpus, parallel.process_batch_rows(b_sh, cfg.train.global_batch,
                                                                cfg.data.seq_len))
  tok = corpus.tokenizer
  step = build_step(cfg, objective, mesh, vocab_size=tok.vocab_size, mask_id=tok.mask_id,
                    num_steps=stream.num_steps)
  return Experiment(**vars(step), cfg=cfg, objective=objective, stream=stream, corpus=corpus)


def abstract_state(exp: Step, seed: int):
  """The train state's shapes and dtypes (for restoring a checkpoint)."""
  return jax.eval_shape(lambda: train.init_state(exp.model, exp.optimizer, seed))


def restore_params(exp: Experiment, workdir: str):
  """The parameters of the latest checkpoint in `workdir` and its step (for evaluation)."""
  directory = epath.Path(workdir) / "checkpoints"  # local or gs://
  if not directory.is_dir():
    raise CheckpointError(f"no checkpoint in {workdir}: train first, or point --workdir at a run")
  checkpointer = ckpt_lib.Checkpointer(directory, keep=exp.cfg.train.keep_checkpoints,
                                       async_save=False)
  try:
    latest = checkpointer.latest_step()
    if latest is None:
      raise CheckpointError(f"no checkpoint in {directory}: train first, or point --workdir at a "
                            "run")
    abstract = abstract_state(exp, exp.cfg.seed)
    state, _ = checkpointer.restore(latest, ckpt_lib.abstract_like(exp.shardings, abstract))
    return state["params"], latest
  finally:
    checkpointer.close()


def initial_params(exp: Experiment):
  """The host params model.init_from names (a Hugging Face directory), or None: random init."""
  path = exp.cfg.model.init_from
  if not path:
    return None
  return hf_import.load_hf_params(path, exp.model)


def loaded_model(exp: Experiment, params, step: int = 0) -> LoadedModel:
  """An in-memory experiment's parameters as a LoadedModel (evaluation during training, tests)."""
  return LoadedModel(model=exp.model, params=params, tokenizer=exp.corpus.tokenizer,
                     kind=objectives.kind_of(exp.objective), objective=exp.objective,
                     mesh=exp.mesh, rules=tuple(exp.cfg.rules), seq_len=exp.cfg.data.seq_len,
                     step=step, cfg=exp.cfg)


def load_model(cfg, workdir: str, objective: str | None = None) -> LoadedModel:
  """The latest checkpoint of `objective` (default: the config's first) in workdir/<objective>."""
  objective = objective or config_lib.objective_names(cfg)[0]
  exp = build_experiment(cfg, objective)
  params, step = restore_params(exp, epath.Path(workdir) / objective)
  return loaded_model(exp, params, step)
