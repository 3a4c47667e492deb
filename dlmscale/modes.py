"""Every mode of the CLI, one function each; main.py parses flags and calls one of these.

train    every objective of the config, each into <workdir>/<objective>, then the side-by-side table
eval     validation and eval.tasks for each objective's latest checkpoint
sample   completions of sample.prompts from each checkpoint
code     HumanEval / MBPP pass@k of each checkpoint, in a sandbox
prepare  tokenize and pack the corpus once; fingerprint: the token stream's hash, no training
compile  the sharded train step compiled by libtpu for a TPU topology, on this host
config   the fully resolved config as JSON (readable back with --config=FILE.json)
sweep    a study's runs, one workdir each, locally or as TPU VM / xpk commands
plan     a study's runs priced in parameters, FLOPs, tokens and chip-hours
analyze  runs and sweeps in one table, crossover points, the data potential R*, plots
export   a run's latest checkpoint (--workdir=RUN/<objective>) as a Hugging Face model (--out)

eval, sample and code read the run's own saved config: a --config that changes anything but
eval.*, sample.*, code.* (or picks fewer objectives) is refused.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import logging
import os
import shutil
import time

import jax
from etils import epath

from dlmscale import analysis
from dlmscale import compile as compile_lib
from dlmscale import config as config_lib
from dlmscale import compilation_cache, config_files, launchers, parallel, planner, storage
from dlmscale import sweep as sweep_lib
from dlmscale.data import ensure_prepared, prepare, prepared_dir, validation_subset
from dlmscale.data.pipeline import array_fingerprint
from dlmscale.errors import ConfigError, DlmscaleError
from dlmscale.evaluation import code as code_lib
from dlmscale.evaluation.multiple_choice import format_table as task_table
from dlmscale import experiment as experiment_lib
from dlmscale import export as export_lib
from dlmscale.experiment import build_experiment, load_model, make_stream, restore_params
from dlmscale.preemption import Preempted, Sigterm
from dlmscale.run_files import ensure_writable_dir, read_json, write_text_atomic
from dlmscale.runner import evaluate, run_training
from dlmscale.sampling import generate_text

log = logging.getLogger("dlmscale")
_DATA_FREE_MODES = ("compile", "config", "plan", "sweep", "analyze")
# What eval, sample and code may change in a trained run's config: nothing they read for the
# model or its data, so tokens seen, epochs and the validation set stay the run's own.
CHECKPOINT_MODE_CHANGES = ("eval.", "sample.", "code.", "objectives", "train.profile_steps",
                           "train.wandb_project", "model.init_from")


@dataclasses.dataclass(frozen=True)
class Options:
  """What the command line gave: the loaded config (cfg), its spec FILE[:ARGS], and the flags."""
  cfg: object = None
  config_spec: str | None = None
  workdir: str | None = None
  topology: str | None = None
  study: str | None = None
  scale: str | None = None
  dry_run: bool = False
  launcher: str = "local"
  parallel: int = 1
  yes: bool = False
  launch_options: tuple[str, ...] = ()
  mfu: float = 0.4
  compile: bool = False
  distributed: tuple = (None, None, None, None, False)
  run_args: tuple[str, ...] = ()  # sweep: arguments after `--`, passed to every run
  runs: tuple[str, ...] = ()
  out: str | None = None
  metric: str = "val"
  force: bool = False
  plots: bool = True
  prepare_engine: str = "local"  # prepare: "local" or "beam" (dlmscale.data.beam_prepare)
  beam_options: str = ""


# The CLI's exit codes beyond 0 and 2 (a one-line user error): interrupted by SIGTERM, the state
# saved (143, rerun to resume); a sweep finished with failed runs (1).
INTERRUPTED = (Preempted, sweep_lib.SweepInterrupted)
FAILED = (sweep_lib.SweepFailed,)


def run(mode: str, o: Options):
  """Runs one mode of the CLI (see the module docstring)."""
  # A run directory that cannot work (an unknown scheme, gs:// without the gcs extra) fails here,
  # before anything is built or written.
  storage.check_location(o.workdir)
  storage.check_location(o.out, "--out")
  for path in o.runs:
    storage.check_location(path, "--runs")
  compilation_cache.enable()  # before anything compiles; see dlmscale/compilation_cache.py
  if mode == "compile" or (mode == "plan" and o.compile):
    if not os.environ.get("JAX_PLATFORMS"):
      # libtpu's compile-only devices need no TPU backend; on a CPU host one would only print
      # warnings while failing to start.
      jax.config.update("jax_platforms", "cpu")
  if mode not in _DATA_FREE_MODES:
    parallel.maybe_initialize_distributed(*o.distributed[:4], auto=o.distributed[4])
  handlers = {
      "train": lambda: train(o.cfg, o.workdir),
      "eval": lambda: evaluate_checkpoints(o.cfg, o.workdir),
      "sample": lambda: sample(o.cfg, o.workdir),
      "code": lambda: code(o.cfg, o.workdir),
      "prepare": lambda: prepare_corpus(o.cfg, o.prepare_engine, o.beam_options),
      "fingerprint": lambda: stream_identity(o.cfg),
      "compile": lambda: compile_step(o.cfg, o.topology),
      "config": lambda: show_config(o.cfg),
      "sweep": lambda: sweep(o),
      "plan": lambda: plan(o),
      "analyze": lambda: analyze(o),
      "export": lambda: export(o.cfg, o.workdir, o.out),
  }
  return handlers[mode]()


# --- train and evaluate ---------------------------------------------------------------------------

def train(cfg, workdir: str) -> list[dict]:
  """Trains each objective into workdir/<objective>; prints and saves the comparison table."""
  config_lib.validate(cfg)
  created = None if storage.is_remote(workdir) else _first_missing(workdir)
  ensure_writable_dir(workdir)
  results = []
  try:
    with Sigterm("start-up (nothing new was saved)") as sigterm:
      for name in config_lib.objective_names(cfg):
        sigterm.phase = f"start-up of {name} (nothing new was saved)"
        exp = build_experiment(cfg, name)
        _announce(exp)
        start = time.time()
        result = run_training(exp, os.path.join(workdir, name))
        result["wall_s"] = time.time() - start
        results.append(result)
      sigterm.phase = "the final report (every objective finished and was validated)"
      _report(results, workdir, "results.json")
  except DlmscaleError:
    # Refused while building (mesh, batch, tokenizer, init_from): leave no empty workdir behind.
    if created and not any(files for _, _, files in os.walk(created)):
      shutil.rmtree(created, ignore_errors=True)
    raise
  return results


def _first_missing(path: str) -> str | None:
  """The outermost directory of `path` that does not exist yet (None when `path` exists)."""
  path, missing = os.path.abspath(path), None
  while not os.path.exists(path):
    path, missing = os.path.dirname(path), path
  return missing


def evaluate_checkpoints(cfg, workdir: str) -> list[dict]:
  """Validates the latest checkpoint of each objective in workdir/<objective> and scores the
  configured tasks (eval.tasks)."""
  check_run_config(cfg, workdir)
  results = []
  for name in config_lib.objective_names(cfg):
    exp = build_experiment(cfg, name)
    params, step = restore_params(exp, os.path.join(workdir, name))
    results.append({"objective": name, "steps": step,
                    "tokens_seen": step * exp.stream.tokens_per_step,
                    "epochs": exp.stream.epoch_at(step), **evaluate(exp, params, step)})
  _report(results, workdir, "eval.json")
  return results


def check_run_config(cfg, workdir: str) -> None:
  """ConfigError when cfg differs from a run's saved config.json other than in eval/sample/code."""
  for name in config_lib.objective_names(cfg):
    path = storage.join(workdir, name, "config.json")
    saved = read_json(path)  # local or gs://
    if saved is None:
      continue  # no run here yet: restoring its checkpoint says so
    diff = config_lib.changed_keys(saved, json.loads(config_lib.to_json(cfg)),
                                   allowed=CHECKPOINT_MODE_CHANGES)
    if diff:
      raise ConfigError(f"the config differs from the run's own {path} at {', '.join(diff[:5])}: "
                        "this mode may change only eval.*, sample.*, code.*; drop --config to "
                        "use the run's saved config")


def _announce(exp) -> None:
  if jax.process_index():
    return
  counts = exp.model.param_counts()
  s = exp.stream.summary()
  print(f"[{exp.objective}] params {counts['total']:,} total, {counts['non_embedding']:,} "
        f"non-embedding | mesh {dict(exp.mesh.shape)} on {jax.device_count()} "
        f"{jax.devices()[0].platform} devices, {jax.process_count()} process(es)", flush=True)
  print(f"[{exp.objective}] data: unique U={s['unique_tokens_actual']:,} tokens "
        f"(asked {s['unique_tokens_requested']:,}), total T={s['total_tokens_actual']:,} "
        f"(asked {s['total_tokens_requested']:,}), {s['num_epochs']:.2f} epochs, "
        f"{s['num_steps']} steps of {exp.stream.tokens_per_step:,} tokens, "
        f"stream {s['fingerprint'][:16]}", flush=True)


def _report(results, workdir, filename) -> None:
  if jax.process_index():
    return
  print(format_table(results), flush=True)
  write_text_atomic(storage.join(workdir, filename), json.dumps(results, indent=1))


def format_table(results: list[dict]) -> str:
  """Side-by-side table: tokens seen, epochs, AR validation NLL, DLM validation ELBO bound."""
  header = (f"{'objective':<14}{'tokens seen':>14}{'epochs':>9}{'AR val NLL':>18}"
            f"{'DLM val ELBO':>18}{'wall':>9}")
  lines = [header, "-" * len(header)]
  for r in results:
    cells = {"nll": "-", "elbo": "-"}
    if "val_mean" in r:
      cells[r["val_kind"]] = f"{r['val_mean']:.4f}±{r['val_stderr']:.4f}"
    wall = f"{r['wall_s']:.0f}s" if "wall_s" in r else "-"
    lines.append(f"{r['objective']:<14}{r['tokens_seen']:>14,}{r['epochs']:>9.2f}"
                 f"{cells['nll']:>18}{cells['elbo']:>18}{wall:>9}")
  lines.append("(nats per token on held-out sequences; the ELBO is an upper bound on the DLM's NLL)")
  for r in results:
    if r.get("tasks"):
      lines += ["", f"{r['objective']} at step {r['steps']}:", task_table(r["tasks"])]
  return "\n".join(lines)


# --- generation -----------------------------------------------------------------------------------

def sample(cfg, workdir: str) -> list[dict]:
  """Each objective's latest checkpoint completes cfg.sample.prompts; prints the completions and
  returns [{objective, kind, step, samples: [{prompt, completions}]}]."""
  config_lib.validate(cfg)
  check_run_config(cfg, workdir)
  s = cfg.sample
  records = []
  for objective in config_lib.objective_names(cfg):
    lm = load_model(cfg, workdir, objective)
    completions = generate_text(
        lm, list(s.prompts), max_new_tokens=s.max_new_tokens, num_samples=s.num_samples,
        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, stop=tuple(s.stop),
        steps=s.steps, block_length=s.block_length, remasking=s.remasking, seed=s.seed,
        threshold=s.threshold, cache=s.cache, refresh_every=s.refresh_every)
    samples = [{"prompt": p, "completions": c} for p, c in zip(s.prompts, completions)]
    record = {"objective": objective, "kind": lm.kind, "step": lm.step, "samples": samples}
    _print_samples(record)
    records.append(record)
  return records


def _print_samples(record: dict) -> None:
  if jax.process_index():
    return
  print(f"[{record['objective']}] {record['kind']} checkpoint step {record['step']}", flush=True)
  for i, s in enumerate(record["samples"]):
    for j, completion in enumerate(s["completions"]):
      print(f"--- prompt {i}, sample {j}\n{s['prompt']}{completion}", flush=True)


def code(cfg, workdir: str) -> list[dict]:
  """For each objective: load its checkpoint, generate with cfg.sample's decoding settings, score
  cfg.code's benchmark. Full per-problem results go to
  <workdir>/<objective>/eval/code_<benchmark>_step<step>.json; the summaries are returned."""
  config_lib.validate(cfg)
  ks = code_lib.check_code_config(cfg, config_lib.objective_names(cfg))
  check_run_config(cfg, workdir)
  c, s = cfg.code, cfg.sample
  stops = code_lib.STOPS[c.benchmark]
  summaries = []
  for objective in config_lib.objective_names(cfg):
    lm = load_model(cfg, workdir, objective)

    def generate(prompts, num_samples, lm=lm):
      fits = [code_lib.prompt_fits(lm, p, s.max_new_tokens) for p in prompts]
      if not any(fits):
        raise ConfigError(f"no {c.benchmark} prompt fits seq_len={lm.seq_len} with "
                          f"sample.max_new_tokens={s.max_new_tokens}: train with a longer "
                          "data.seq_len or lower max_new_tokens")
      done = iter(generate_text(
          lm, [p for p, f in zip(prompts, fits) if f], max_new_tokens=s.max_new_tokens,
          num_samples=num_samples, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
          stop=tuple(s.stop) + stops, steps=s.steps, block_length=s.block_length,
          remasking=s.remasking, seed=s.seed, batch_size=cfg.eval.batch_size,
          threshold=s.threshold, cache=s.cache, refresh_every=s.refresh_every))
      return [next(done) if f else [None] * num_samples for f in fits]

    report = code_lib.evaluate_code(generate, c.benchmark, num_samples=c.num_samples, ks=ks,
                                    limit=c.limit, timeout_s=c.timeout_s, memory_mb=c.memory_mb)
    report.update(objective=objective, kind=lm.kind, step=lm.step, temperature=s.temperature,
                  max_new_tokens=s.max_new_tokens)
    path = storage.join(workdir, objective, "eval", f"code_{c.benchmark}_step{lm.step}.json")
    epath.Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps(report, indent=1))
    summaries.append({k: v for k, v in report.items() if k != "problems"} | {"results": path})
  print_json(summaries)
  return summaries


# --- data -----------------------------------------------------------------------------------------

def prepare_corpus(cfg, engine: str = "local", beam_options: str = "") -> dict:
  """Prepares cfg.data into its prepared_dir (once), locally or on Beam; returns a summary."""
  config_lib.validate(cfg)
  if beam_options and engine != "beam":
    raise ConfigError("--beam_options needs --prepare_engine=beam; add it or drop --beam_options")
  d = cfg.data
  directory = prepared_dir(d)
  start = time.time()
  if engine == "beam":
    from dlmscale.data.beam_prepare import prepare_beam  # noqa: PLC0415  (the beam extra)
    meta = prepare_beam(d, directory, beam_options, records_per_shard=d.records_per_shard)
  else:
    meta = prepare(d, directory, workers=d.workers, records_per_shard=d.records_per_shard)
  wall = time.time() - start
  tr, va = meta["splits"]["train"], meta["splits"]["val"]
  summary = {
      "prepared_dir": directory,
      "documents": {"train": tr["num_documents"], "val": va["num_documents"]},
      "tokens": {"train": tr["num_tokens"], "val": va["num_tokens"]},
      "sequences": {"train": tr["num_sequences"], "val": va["num_sequences"]},
      "val_sequences_dropped_as_in_train": va["num_sequences_dropped_as_in_train"],
      "text_mb": meta["num_text_bytes"] / 1e6,
      "seconds": wall,
      "tokenizer": meta["tokenizer"],
      "sources": meta["sources"],
  }
  print_json(summary)
  return summary


def stream_identity(cfg) -> dict:
  """Stream and validation fingerprints of cfg's data config, computed without a model."""
  config_lib.validate(cfg)
  data = ensure_prepared(cfg.data)
  stream = make_stream(cfg, data)
  val = validation_subset(data.val, cfg.eval.max_sequences)
  identity = {
      "objectives": list(config_lib.objective_names(cfg)),
      "prepared_dir": data.path,
      **stream.summary(),
      "train_split_fingerprint": data.train.fingerprint,
      "val_split_fingerprint": data.val.fingerprint,
      "val_sequences_evaluated": len(val),
      "val_evaluated_fingerprint": array_fingerprint(val),
  }
  print_json(identity)
  return identity


# --- configs, compiling ---------------------------------------------------------------------------

def show_config(cfg) -> str:
  """The resolved config as JSON (tuples as lists), after validation; --config=FILE.json reads it
  back."""
  config_lib.validate(cfg)
  text = json.dumps(json.loads(config_lib.to_json(cfg)), indent=1, sort_keys=True)
  if jax.process_index() == 0:
    print(text, flush=True)
  return text


def compile_step(cfg, topology: str | None) -> list[dict]:
  """Every objective's step compiled for the slice; a table, then JSON."""
  if not topology:
    raise ConfigError("--topology is required for --mode=compile, e.g. --topology=v5p-64")
  reports = []
  for objective in config_lib.objective_names(cfg):
    try:
      reports.append(compile_lib.compile_for_topology(cfg, objective, topology))
    except compile_lib.DoesNotFitError as e:
      if e.report:
        print(compile_lib.format_table(reports + [e.report]), flush=True)
      raise
  print(compile_lib.format_table(reports), flush=True)
  print_json(reports)
  return reports


def print_json(obj) -> None:
  if jax.process_index() == 0:
    print(json.dumps(obj, indent=1, sort_keys=True), flush=True)


# --- studies --------------------------------------------------------------------------------------

def sweep(o: Options) -> list[dict]:
  """A study's runs at a scale, one workdir each: run locally, or printed (and with --yes run)
  as Cloud TPU VM / xpk commands; --dry_run only prints."""
  study = o.study or (o.config_spec or "").split(":", 1)[0]
  if not study:
    raise ConfigError("--study is required for --mode=sweep, e.g. --study=experiments/crossover.py")
  if not o.scale:
    raise ConfigError("--scale is required for --mode=sweep: cpu, gpu or paper")
  return sweep_lib.run_sweep(study, o.scale, o.workdir, dry_run=o.dry_run, launcher=o.launcher,
                             parallel=o.parallel, yes=o.yes,
                             launcher_options=launchers.parse_options(o.launch_options),
                             extra_args=o.run_args)


def plan(o: Options) -> list[dict]:
  """Prices a run, or a study's whole grid at --scale (paper by default) when the study file is
  given without arguments; with --topology, chip-hours at --mfu; with --compile, per-chip memory."""
  spec = o.study or o.config_spec
  if not spec:
    raise ConfigError("--config (a run or a study file) is required for --mode=plan")
  path, _, arg = spec.partition(":")
  module = config_files.load_module(path)
  if arg or not hasattr(module, "runs"):
    runs = [(arg or os.path.basename(path), module.get_config(arg) if arg else o.cfg)]
  else:
    runs = [(a, module.get_config(a)) for a in module.runs(o.scale or "paper")]
  accel = planner.accelerator(o.topology) if o.topology else None
  if o.compile and not o.topology:
    raise ConfigError("--compile needs --topology=<TPU slice>, e.g. v5p-128")
  rows = []
  for name, cfg in _one_objective_each(runs):
    vocab, _ = experiment_lib.tokenizer_ids(cfg)
    row = planner.plan_run(cfg, name, accel, o.mfu, vocab)
    if o.compile:
      report = compile_lib.compile_for_topology(cfg, row["objective"], o.topology,
                                                check_fit=False)
      row["memory_per_chip_gib"] = report["memory_per_chip"]["total"] / 2**30
      row["fits"] = report["fits"]
    rows.append(row)
  # No jax.process_index() here: pricing a plan must not start an accelerator backend.
  print(planner.format_plan(rows), flush=True)
  print(json.dumps(rows, indent=1, sort_keys=True), flush=True)
  return rows


def _one_objective_each(runs):
  """(name, cfg) pairs with one objective each: a config naming several trains each of them."""
  for name, cfg in runs:
    names = config_lib.objective_names(cfg)
    for objective in names:
      one = copy.deepcopy(cfg)
      one.objectives = (objective,)
      yield (name if len(names) == 1 else f"{name}:{objective}"), one


def analyze(o: Options) -> dict:
  """Runs (or sweeps) collected into one table, crossovers, the data potential R* and plots."""
  if not o.runs or not o.out:
    raise ConfigError("--mode=analyze needs --runs=DIR[,DIR...] (runs or sweeps) and --out=DIR, "
                      "e.g. --runs=runs/replication --out=runs/replication/analysis")
  summary = analysis.analyze(list(o.runs), o.out, metric=o.metric, force=o.force,
                             plots=o.plots)
  print(summary["text"], flush=True)
  return summary


# --- export ---------------------------------------------------------------------------------------

def export(cfg, workdir: str, out: str | None) -> dict:
  """The latest checkpoint of one objective (workdir RUN/<objective>, or RUN when it trained
  only one) as a Hugging Face directory: AR for transformers' Auto classes, DLM with
  trust_remote_code. Layouts transformers cannot express are refused before loading anything."""
  if not out:
    raise ConfigError("--mode=export needs --out=DIR, e.g. --out=runs/quickstart/hf_ar")
  config_lib.validate(cfg)
  problem = export_lib.export_problem(cfg.model)
  if problem:
    raise ConfigError(problem)
  names = config_lib.objective_names(cfg)
  run_dir, objective = storage.split(workdir)  # normpath would turn gs:// into gs:/
  if objective not in names:
    if len(names) > 1:
      raise ConfigError(f"{workdir} holds the objectives {list(names)}: export one at a time, "
                        f"e.g. --workdir={storage.join(workdir, names[0])}")
    objective, run_dir = names[0], workdir
  one = copy.deepcopy(cfg)
  one.objectives = (objective,)
  check_run_config(one, run_dir)
  lm = load_model(one, run_dir, objective)
  report = export_lib.export_loaded(lm, out) if jax.process_index() == 0 else {"out": out}
  report.update(objective=objective, kind=lm.kind, step=lm.step)
  print_json(report)
  return report
