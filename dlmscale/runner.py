"""The training run of an assembled experiment: steps, checkpoints, metrics, evaluation (the
side-effect edge).

A run trains one objective into its own workdir. Started again in the same workdir it resumes from
the latest checkpoint and ends bitwise equal to a run that was never interrupted.
"""
from __future__ import annotations

import json
import logging
import math
import os
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlmscale import checkpoint as ckpt_lib
from dlmscale import config as config_lib
from dlmscale import flops, objectives, parallel, train
from dlmscale.data import validation_subset
from dlmscale.errors import CheckpointError, NonFiniteLossError
from dlmscale.evaluation.suite import flat_task_metrics, is_eval_step, score_tasks, task_list
from dlmscale.evaluation.validation import evaluate_validation
from dlmscale.experiment import Experiment, abstract_state, loaded_model
from dlmscale.metrics import MetricsWriter, progress_line

log = logging.getLogger("dlmscale")
# Keys that may change between a run and its resumption without changing its result.
RESUMABLE_CHANGES = ("train.log_every", "train.checkpoint_every", "train.keep_checkpoints",
                     "train.async_checkpointing", "train.peak_flops_per_device")
# Evaluation, generation and code-benchmark settings never touch the training state.
RESUMABLE_SECTIONS = ("eval.", "sample.", "code.")


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint was saved and the run can be resumed."""


class _SigtermFlag:
  """Turns SIGTERM into a flag checked between steps, so the state is saved whole."""

  def __init__(self):
    self.raised = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: preemption is the caller's business
      self._previous = None
    return self

  def _handle(self, signum, frame):
    self.raised = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_config_matches(workdir: str, cfg_json: str) -> None:
  """A workdir belongs to one config; resuming it with another would silently mix two runs."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.write(cfg_json)
    os.replace(tmp, path)
    return
  with open(path) as f:
    diff = config_lib.changed_keys(json.loads(f.read()), json.loads(cfg_json),
                                   allowed=RESUMABLE_CHANGES + RESUMABLE_SECTIONS)
  if diff:
    raise CheckpointError(f"{workdir} holds a run with a different config (differs at "
                          f"{', '.join(diff[:5])}): use a new --workdir or the original config")


def _restore_or_init(exp: Experiment, checkpointer):
  abstract = abstract_state(exp, exp.cfg.seed)
  latest = checkpointer.latest_step()
  if latest is None:
    return train.create_state(exp.model, exp.optimizer, exp.cfg.seed, exp.shardings), 0
  state, data_state = checkpointer.restore(latest, ckpt_lib.abstract_like(exp.shardings, abstract))
  if data_state.get("stream_fingerprint") != exp.stream.fingerprint():
    raise CheckpointError(f"checkpoint step {latest} in {checkpointer.directory} was written for "
                          "another token stream: use a new --workdir or the original data config")
  return state, int(data_state["next_step"])


def _log_window(exp, writer, pending, window_start_time, step, num_steps, timed_steps):
  """Fetches the metrics of the last steps, checks they are finite, writes their mean."""
  values = jax.device_get(pending)
  for i, m in enumerate(values):
    bad = {k: float(v) for k, v in m.items() if not math.isfinite(float(v))}
    if bad:
      raise NonFiniteLossError(
          f"non-finite {', '.join(sorted(bad))} at step {step - len(values) + i + 1} in "
          f"{exp.objective}: lower train.lr or raise train.warmup_steps (no checkpoint past the "
          "last finite step was written)")
  mean = {k: float(np.mean([m[k] for m in values])) for k in values[-1]}
  elapsed = time.time() - window_start_time
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


def run_training(exp: Experiment, workdir: str, *, stop_after: int | None = None) -> dict:
  """Trains to the end of the token budget (or `stop_after` steps, for tests), then validates."""
  cfg, stream = exp.cfg, exp.stream
  os.makedirs(workdir, exist_ok=True)
  main_process = jax.process_index() == 0
  if main_process:
    _check_config_matches(workdir, config_lib.to_json(cfg))
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"),
                                       keep=cfg.train.keep_checkpoints,
                                       async_save=cfg.train.async_checkpointing)
  writer = MetricsWriter(workdir, enabled=main_process)
  try:
    state, start = _restore_or_init(exp, checkpointer)
    writer.truncate_after(start)
    if start:
      log.info("%s: resumed at step %d from %s", exp.objective, start, checkpointer.directory)
    end = stream.num_steps if stop_after is None else min(stop_after, stream.num_steps)
    stream_fingerprint = stream.fingerprint()
    data_state = lambda s: {"next_step": s, "stream_fingerprint": stream_fingerprint}
    pending, window_start = [], time.time()
    with _SigtermFlag() as sigterm, stream.iterator(start, workers=exp.cfg.data.loader_workers) as batches:
      for step in range(start, end):
        tokens = parallel.place_batch(next(batches), exp.batch_sharding)
        state, metrics = exp.step_fn(state, tokens)
        pending.append(metrics)
        if step == start:  # the first step compiles: keep it out of tokens/s and the ETA
          jax.block_until_ready(metrics)
          window_start = time.time()
        done = step + 1
        preempted = sigterm.raised  # read once: SIGTERM may land mid-step, after save_now
        save_now = done % cfg.train.checkpoint_every == 0 or done == end or preempted
        e = cfg.eval
        evaluate_now = is_eval_step(done, end, e.every, e.at_epochs, stream.epoch_at)
        # Steps before an evaluation are logged first, so none is dropped and none is timed
        # with the evaluation inside its window.
        if done % cfg.train.log_every == 0 or save_now or evaluate_now:
          timed = len(pending) - (1 if done - len(pending) == start else 0)
          _log_window(exp, writer, pending, window_start, done, stream.num_steps, timed)
          pending, window_start = [], time.time()
        if save_now:
          _check_params_finite(state["params"], done, exp.objective)
          checkpointer.save(done, state, data_state(done))
        if evaluate_now:
          writer.write(done, _scalars(evaluate(exp, state["params"], done)), prefix="eval")
          window_start = time.time()  # evaluation time is not training time
        if preempted and done < end:
          checkpointer.wait()
          raise Preempted(f"{exp.objective}: SIGTERM received, saved a checkpoint at step {done} "
                          f"in {checkpointer.directory}: rerun the same command to resume")
    checkpointer.wait()
    result = {"objective": exp.objective, "steps": end,
              "tokens_seen": end * stream.tokens_per_step, "epochs": stream.epoch_at(end),
              "stream_fingerprint": stream_fingerprint,
              # What a reviewer needs to check two runs used the same prepared data.
              "data": {"prepared_dir": exp.corpus.path,
                       "tokenizer_fingerprint": exp.corpus.tokenizer.fingerprint(),
                       "train_split_fingerprint": exp.corpus.train.fingerprint,
                       "val_split_fingerprint": exp.corpus.val.fingerprint}}
    if end == stream.num_steps:
      result.update(evaluate(exp, state["params"], end))
      writer.write(end, _scalars(result), prefix="eval")
    return result
  finally:
    checkpointer.close()
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
