"""The training run of an assembled experiment: steps, checkpoints, metrics, evaluation (the
side-effect edge).

A run trains one objective into its own workdir. Started again in the same workdir it resumes from
the latest checkpoint and ends bitwise equal to a run that was never interrupted.
"""
from __future__ import annotations

import json
import logging
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from dlmscale import checkpoint as ckpt_lib
from dlmscale import config as config_lib
from dlmscale import flops, objectives, parallel, provenance, train
from dlmscale.data import validation_subset
from dlmscale.errors import CheckpointError, NonFiniteLossError, RunIOError
from dlmscale.evaluation.suite import flat_task_metrics, is_eval_step, score_tasks, task_list
from dlmscale.evaluation.validation import evaluate_validation
from dlmscale.experiment import Experiment, abstract_state, initial_params, loaded_model
from dlmscale.metrics import MetricsWriter, progress_line, run_hparams
from dlmscale.profiling import StepProfiler
from dlmscale.preemption import Preempted, Sigterm
from dlmscale.run_files import read_json, write_text_atomic

__all__ = ["Preempted", "evaluate", "run_training", "validate"]
log = logging.getLogger("dlmscale")
# Keys that may change between a run and its resumption without changing its result (or, for
# the last two, that say how to resume).
RESUMABLE_CHANGES = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.async_checkpointing", "train.peak_flops_per_device",
                     "train.restore_fallback", "train.allow_data_change", "train.profile_steps",
                     "train.wandb_project",
                     # Only where a fresh run starts: on resume the checkpoint wins.
                     "model.init_from")
# Evaluation, generation and code-benchmark settings never touch the training state.
RESUMABLE_SECTIONS = ("eval.", "sample.", "code.")


def _claim_workdir(workdir: epath.Path, cfg_json: str, resuming: bool) -> None:
  """A workdir with checkpoints belongs to one config: resuming it with another would silently mix
  two runs. Without a checkpoint nothing can mix, so a fresh start (re)writes config.json."""
  path = workdir / "config.json"
  saved = read_json(path) if resuming else None
  if saved is None:
    write_text_atomic(path, cfg_json)
    return
  diff = config_lib.changed_keys(saved, json.loads(cfg_json),
                                 allowed=RESUMABLE_CHANGES + RESUMABLE_SECTIONS)
  if diff:
    raise CheckpointError(f"{workdir} holds a run with a different config (differs at "
                          f"{', '.join(diff[:5])}): use a new --workdir or the original config")


def _data_identity(exp: Experiment) -> dict:
  return {"stream_fingerprint": exp.stream.fingerprint(),
          "train_split_fingerprint": exp.corpus.train.fingerprint}


def _restore_or_init(exp: Experiment, checkpointer):
  """(state, data state or None for a fresh start, start step); a checkpoint of other data is refused unless
  train.allow_data_change says to go on."""
  abstract = ckpt_lib.abstract_like(exp.shardings, abstract_state(exp, exp.cfg.seed))
  found = checkpointer.restore_latest(abstract, fallback=exp.cfg.train.restore_fallback)
  if found is None:
    return (train.create_state(exp.model, exp.optimizer, exp.cfg.seed, exp.shardings,
                               initial_params(exp)), None, 0)
  state, data_state, step = found
  now = _data_identity(exp)
  changed = [k for k, v in now.items() if k in data_state and data_state[k] != v]
  if changed:
    where = f"checkpoint step {step} in {checkpointer.directory}"
    if not exp.cfg.train.allow_data_change:
      raise CheckpointError(f"{where} was written for other data ({', '.join(changed)} differ): "
                            "use the original data config, a new --workdir, or "
                            "--config.train.allow_data_change=true to continue on this data")
    log.warning("%s was written for other data (%s differ); continuing on this data as "
                "train.allow_data_change asks", where, ", ".join(changed))
  return state, data_state, int(data_state["next_step"])


def _pending_to_json(values) -> list[dict]:
  """Metrics of a partial logging window, exactly (value and dtype), for the checkpoint."""
  return [{k: [float(v), str(np.asarray(v).dtype)] for k, v in m.items()} for m in values]


def _pending_from_json(records) -> list[dict]:
  return [{k: np.asarray(v, dtype=dtype) for k, (v, dtype) in m.items()} for m in records or ()]


def _any_process(flag: bool) -> bool:
  """True in every process when it is true in one (each gets SIGTERM at its own moment)."""
  if jax.process_count() == 1:
    return flag
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))


def _check_finite(exp, values, step) -> None:
  for i, m in enumerate(values):
    bad = {k: float(v) for k, v in m.items() if not math.isfinite(float(v))}
    if bad:
      raise NonFiniteLossError(
          f"non-finite {', '.join(sorted(bad))} at step {step - len(values) + i + 1} in "
          f"{exp.objective}: lower train.lr or raise train.warmup_steps (no checkpoint past the "
          "last finite step was written)")


def _log_window(exp, writer, values, elapsed, step, num_steps, timed_steps):
  """Checks the fetched metrics of the last steps are finite and writes their mean."""
  _check_finite(exp, values, step)
  mean = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
  timed_steps = max(timed_steps, 1)
  tokens_per_s = timed_steps * exp.stream.tokens_per_step / max(elapsed, 1e-9)
  mfu = flops.mfu(tokens_per_s, exp.flops_per_token,
                  flops.peak_flops_per_device(exp.cfg.train.peak_flops_per_device))
  writer.write(step, dict(mean, tokens_per_s=tokens_per_s, epoch=exp.stream.epoch_at(step),
                          tokens_seen=step * exp.stream.tokens_per_step))
  eta = (num_steps - step) * elapsed / timed_steps
  if jax.process_index() == 0:
    print(progress_line(exp.objective, step, num_steps, mean["loss"], tokens_per_s, mfu, eta,
                        exp.stream.epoch_at(step)), flush=True)


@jax.jit
def _params_finite(params) -> jax.Array:
  return jax.tree.reduce(lambda a, b: a & b, jax.tree.map(lambda p: jnp.isfinite(p).all(), params))


def _check_params_finite(params, step: int, objective: str) -> None:
  """Finite losses can still come with an update that overflowed; never checkpoint that."""
  if not bool(_params_finite(params)):
    raise NonFiniteLossError(
        f"non-finite parameters after step {step} in {objective}: lower train.lr or raise "
        "train.warmup_steps (no checkpoint past the last finite step was written)")


def run_training(exp: Experiment, workdir, *, stop_after: int | None = None) -> dict:
  """Trains to the end of the token budget (or `stop_after` steps, for tests), then validates.

  Any failed write (a full disk, a failed asynchronous checkpoint save) stops the run with a
  RunIOError naming the path and the cause; the last good checkpoint stays as it was."""
  workdir = epath.Path(workdir)
  try:
    with Sigterm(f"start-up of {exp.objective} (nothing new was saved)") as sigterm:
      return _train(exp, workdir, stop_after, sigterm)
  except OSError as e:
    raise RunIOError(f"writing the run in {workdir} failed ({ckpt_lib.describe_error(e)}): "
                     "free space or fix permissions, then rerun the same command to resume "
                     "from the last checkpoint") from None


class _Window:
  """The metrics and timing of the steps since the last log line.

  A log step that saves, evaluates or stops nothing is written one step late, after the next
  step is dispatched (`flush`), so the host never waits for the device with nothing queued: the
  metrics are fetched one step behind and the device stays busy while they are written."""

  def __init__(self, exp, writer, pending):
    self.exp, self.writer = exp, writer
    self.pending, self.timed, self.start = pending, 0, time.time()
    self._late = None  # (step, metrics, window start, timed steps) of a window not yet written

  def add(self, metrics, timed: bool) -> None:
    self.pending.append(metrics)
    self.timed += timed

  def restart(self) -> None:
    """Time from now on (after compiling, evaluating)."""
    self.start = time.time()

  def pause(self, seconds: float) -> None:
    """Leaves `seconds` of non-training work (a profiler starting) out of tokens/s."""
    self.start += seconds
    if self._late:
      self._late = (*self._late[:2], self._late[2] + seconds, self._late[3])

  def log(self, step: int, *, late: bool) -> None:
    window = (step, self.pending, self.start, self.timed)
    self.pending, self.timed = [], 0
    if late:
      self._late = window
    else:
      self._write(*window)

  def flush(self) -> None:
    """Writes a late window (call after dispatching the step that follows it)."""
    if self._late:
      window, self._late = self._late, None
      self._write(*window)

  def _write(self, step, pending, start, timed) -> None:
    values = jax.device_get(pending)  # waits for the window's last step, not the one queued
    now = time.time()
    _log_window(self.exp, self.writer, values, now - start, step, self.exp.stream.num_steps,
                timed)
    self.start = now


def _train(exp: Experiment, workdir: epath.Path, stop_after, sigterm) -> dict:
  cfg, stream = exp.cfg, exp.stream
  workdir.mkdir(parents=True, exist_ok=True)
  main_process = jax.process_index() == 0
  checkpointer = ckpt_lib.Checkpointer(workdir / "checkpoints", keep=cfg.train.keep_checkpoints,
                                       async_save=cfg.train.async_checkpointing)
  writer, failed = None, True
  try:
    state, data_state, start = _restore_or_init(exp, checkpointer)
    cfg_json = config_lib.to_json(cfg)
    if main_process:
      _claim_workdir(workdir, cfg_json, resuming=data_state is not None)
      provenance.append(workdir, provenance.start_record(
          config_json=cfg_json, start_step=start, mesh_shape=dict(exp.mesh.shape),
          data=dict(_data_identity(exp), prepared_dir=str(exp.corpus.path),
                    tokenizer_fingerprint=exp.corpus.tokenizer.fingerprint(),
                    val_split_fingerprint=exp.corpus.val.fingerprint)))
    writer = MetricsWriter(str(workdir), enabled=main_process,
                           hparams=run_hparams(cfg, exp.objective),
                           wandb_project=cfg.train.wandb_project)
    writer.truncate_after(start)
    if start:
      log.info("%s: resumed at step %d from %s", exp.objective, start, checkpointer.directory)
    end = stream.num_steps if stop_after is None else min(stop_after, stream.num_steps)
    e = cfg.eval
    eval_due = lambda done: is_eval_step(done, end, e.every, e.at_epochs, stream.epoch_at)
    if start and eval_due(start):
      # Its record was dropped above with anything an interruption may have left half done.
      writer.write(start, _scalars(evaluate(exp, state["params"], start)), prefix="eval")
    identity = _data_identity(exp)
    # A SIGTERM checkpoint lands mid-window: its steps' metrics travel with it, so the resumed
    # run logs the same window means as one never interrupted.
    window = _Window(exp, writer, _pending_from_json((data_state or {}).get("pending_metrics")))
    sigterm.phase = f"training {exp.objective}"
    with (sigterm.deferred(), stream.iterator(start, workers=cfg.data.loader_workers) as batches,
          StepProfiler(cfg.train.profile_steps, str(workdir), enabled=main_process) as profiler):
      for step in range(start, end):
        before = time.time()
        profiler.step(step, state)
        window.pause(time.time() - before)  # starting or stopping a trace is not training time
        tokens = parallel.place_batch(next(batches), exp.batch_sharding)
        state, metrics = exp.step_fn(state, tokens)
        window.flush()  # the previous step's late log line, now that this step is queued
        window.add(metrics, timed=step != start)
        if step == start:  # the first step compiles: keep it out of tokens/s and the ETA
          jax.block_until_ready(metrics)
          window.restart()
        done = step + 1
        # Read once (SIGTERM may land mid-step); every process must stop at the same step.
        preempted = _any_process(sigterm.raised)
        regular_save = done % cfg.train.checkpoint_every == 0 or done == end
        evaluate_now = eval_due(done)
        # Steps before an evaluation are logged first, so none is dropped and none is timed
        # with the evaluation inside its window.
        if done % cfg.train.log_every == 0 or regular_save or evaluate_now:
          window.log(done, late=not (regular_save or evaluate_now or preempted))
          checkpointer.check()  # a failed asynchronous save stops the run here, not later
        if regular_save or preempted:
          _check_params_finite(state["params"], done, exp.objective)
          extra = {}
          if window.pending:
            values = jax.device_get(window.pending)
            _check_finite(exp, values, done)
            extra["pending_metrics"] = _pending_to_json(values)
          checkpointer.save(done, state, dict(identity, next_step=done, **extra))
        if evaluate_now:
          writer.write(done, _scalars(evaluate(exp, state["params"], done)), prefix="eval")
          window.restart()  # evaluation time is not training time
        if preempted and done < end:
          checkpointer.wait()
          failed = False
          raise Preempted(f"{exp.objective}: SIGTERM received, saved a checkpoint at step {done} "
                          f"in {checkpointer.directory}: rerun the same command to resume")
      profiler.close(state)  # after the last step's work, so the trace holds whole steps
    sigterm.phase = (f"final validation of {exp.objective} (training finished; its checkpoint "
                     f"at step {end} is saved)")
    checkpointer.wait()
    result = {"objective": exp.objective, "steps": end,
              "tokens_seen": end * stream.tokens_per_step, "epochs": stream.epoch_at(end),
              "stream_fingerprint": identity["stream_fingerprint"],
              # What a reviewer needs to check two runs used the same prepared data.
              "data": {"prepared_dir": exp.corpus.path,
                       "tokenizer_fingerprint": exp.corpus.tokenizer.fingerprint(),
                       "train_split_fingerprint": exp.corpus.train.fingerprint,
                       "val_split_fingerprint": exp.corpus.val.fingerprint}}
    if end == stream.num_steps:
      result.update(evaluate(exp, state["params"], end))
      writer.write(end, _scalars(result), prefix="eval")
    failed = False
    return result
  finally:
    # After an error, a second one from the last save must not replace it.
    checkpointer.close(quiet=failed)
    if writer is not None:
      writer.close()


def validate(exp: Experiment, params) -> dict:
  """Validation NLL (AR) or ELBO bound (DLM) per token on the held-out sequences."""
  kind = objectives.kind_of(exp.objective)
  e = exp.cfg.eval
  val = validation_subset(exp.corpus.val, e.max_sequences)
  out = evaluate_validation(exp.model, params, val, kind, mesh=exp.mesh, rules=tuple(exp.cfg.rules),
                            batch_size=e.batch_size, num_samples=e.mask_samples,
                            mask_id=exp.corpus.tokenizer.mask_id, seed=exp.cfg.seed)
  return {"val_kind": "nll" if kind == "ar" else "elbo", "val_mean": out["mean"],
          "val_stderr": out["stderr"], "val_sequences": out["sequences"]}


def evaluate(exp: Experiment, params, step: int) -> dict:
  """Validation plus, under 'tasks', the configured benchmark results (eval.tasks)."""
  out = validate(exp, params)
  if task_list(exp.cfg.eval.tasks):
    out["tasks"] = score_tasks(loaded_model(exp, params, step), exp.cfg)
  return out


def _scalars(result: dict) -> dict:
  """The validation figures and task metrics of a result, as loggable floats."""
  out = {k: result[k] for k in ("val_mean", "val_stderr")}
  out.update(flat_task_metrics(result.get("tasks", {})))
  return out
