"""CLI: python -m dlmscale.main --config=FILE[:arg] [--workdir=DIR] [--mode=MODE].

Modes: train (every objective, then validate), eval (validate checkpoints and score eval.tasks),
sample (generate from sample.prompts), code (HumanEval/MBPP pass@k in a sandbox), prepare (tokenize
and pack the corpus once), fingerprint (print the token-stream hash without training), compile
(compile the sharded train step for --topology=v5p-64 with libtpu on this host: per-chip memory
and FLOPs).
The console script also takes the mode as a subcommand: `dlmscale prepare --config=...`.
"""
from __future__ import annotations

import logging
import os
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from dlmscale.config_files import add_project_root

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
MODES = ("train", "eval", "sample", "code", "prepare", "fingerprint", "compile")
_CHECKPOINT_MODES = ("train", "eval", "sample", "code")
_MODE = flags.DEFINE_enum("mode", "train", list(MODES),
                          "train: train every objective and validate; eval: validate checkpoints "
                          "and score eval.tasks; sample: generate from sample.prompts; code: "
                          "pass@k on code.benchmark; "
                          "prepare: prepare the corpus; fingerprint: print the stream hash; "
                          "compile: compile the train step for --topology (no TPU, no data).")
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU slice for --mode=compile, e.g. v5p-64.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", None, "e.g. 'gloo' for multi-process CPU.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-host job whose peers jax finds "
                               "itself (Cloud TPU slices, Slurm, Open MPI): launch/tpu_vm.sh.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _config_path(argv) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith(("--config=", "-config=")):
      return arg.split("=", 1)[1].split(":", 1)[0]
    if arg in ("--config", "-config") and i + 1 < len(argv):
      return argv[i + 1].split(":", 1)[0]
  return None


def _parse_flags(argv):
  """absl's parser, but a bad flag or config override is a one-line error, not a traceback."""
  config_path = _config_path(argv)
  add_project_root(config_path)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(" ".join(str(e).split()))
  except (ImportError, SyntaxError, NameError) as e:
    _fail(f"config file {config_path!r} failed to load ({type(e).__name__}: "
          f"{' '.join(str(e).split())}): fix the file or run from the checkout holding configs/")
  except (AttributeError, KeyError) as e:
    # ml_collections: AttributeError(KeyError("'key'\nDid you mean ...")) for an unknown key.
    while e.args and isinstance(e.args[0], Exception):
      e = e.args[0]
    lines = str(e.args[0] if e.args else e).splitlines() or [""]
    key, hint = lines[0].strip("\"'"), " ".join(lines[1:])
    paths = [a.split("=", 1)[0].split(".", 1)[1] for a in argv[1:]
             if re.match(r"-{1,2}(no)?config\.", a)]
    named = [p for p in paths if key in p.split(".")] or paths
    _fail(f"unknown config key {' or '.join(map(repr, named)) or repr(key)} in the --config.* "
          f"overrides{' (' + hint + ')' if hint else ''}: override only keys of "
          "dlmscale.config.default_config()")


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=experiments/quickstart.py")
  config_file = config_flags.get_config_filename(flags.FLAGS["config"]).split(":", 1)[0]
  if not os.path.isfile(config_file):
    _fail(f"config file {config_file!r} not found: pass --config=path/to/experiment.py")
  if not _WORKDIR.value and _MODE.value in _CHECKPOINT_MODES:
    _fail(f"--workdir is required for --mode={_MODE.value}, e.g. --workdir=runs/quickstart")
  if _MODE.value == "compile":
    _compile(_CONFIG.value, _TOPOLOGY.value)
    return
  # force: absl.app installed its own handler (with a verbose prefix) before main() runs.
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  for noisy in ("absl", "orbax", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from dlmscale import commands, experiment  # after flag parsing: keeps --help fast
  from dlmscale.errors import DlmscaleError
  from dlmscale.data import DataError
  from dlmscale.parallel import maybe_initialize_distributed
  try:
    maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                 _CPU_COLLECTIVES.value, auto=_MULTIHOST.value)
    if _MODE.value == "train":
      experiment.train_all(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "eval":
      experiment.evaluate_all(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "sample":
      from dlmscale.sampling import sample_command
      sample_command(_CONFIG.value, _WORKDIR.value)
    elif _MODE.value == "code":
      from dlmscale.evaluation.code import code_command
      commands.print_json(code_command(_CONFIG.value, _WORKDIR.value))
    elif _MODE.value == "prepare":
      commands.print_json(commands.prepare_corpus(_CONFIG.value))
    else:
      commands.print_json(commands.stream_identity(_CONFIG.value))
  except experiment.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(143)
  except (DlmscaleError, DataError) as e:
    _fail(str(e))


def _compile(cfg, topology: str | None) -> None:
  """--mode=compile: every objective's step compiled for the slice; a table, then JSON."""
  if not topology:
    _fail("--topology is required for --mode=compile, e.g. --topology=v5p-64")
  # The compile-only devices come from libtpu directly; a TPU backend is neither needed nor
  # wanted (on a CPU host it would only print warnings while failing to start).
  if not os.environ.get("JAX_PLATFORMS"):
    import jax
    jax.config.update("jax_platforms", "cpu")
  from dlmscale import commands, compile as compile_lib, config as config_lib
  from dlmscale.errors import DlmscaleError
  reports = []
  try:
    for objective in config_lib.objective_names(cfg):
      try:
        reports.append(compile_lib.compile_for_topology(cfg, objective, topology))
      except compile_lib.DoesNotFitError as e:
        if e.report:
          reports.append(e.report)
          print(compile_lib.format_table(reports), flush=True)
        raise
  except DlmscaleError as e:
    _fail(str(e))
  print(compile_lib.format_table(reports), flush=True)
  commands.print_json(reports)


def _drop_closed_loop_noise(unraisable, _default=sys.unraisablehook) -> None:
  """When an Orbax restore fails, the TensorStore reads still in flight call back into the event
  loop Orbax already closed; their tracebacks would bury the one-line error, so they are dropped."""
  exc = unraisable.exc_value
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return
  _default(unraisable)


def _subcommand_to_flag(argv: list[str]) -> list[str]:
  """`dlmscale prepare --config=...` is `--mode=prepare --config=...`."""
  if len(argv) > 1 and argv[1] in MODES:
    return [argv[0], f"--mode={argv[1]}", *argv[2:]]
  return argv


def run() -> None:
  sys.argv = _subcommand_to_flag(sys.argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.unraisablehook = _drop_closed_loop_noise
  app.run(main, flags_parser=_parse_flags)


if __name__ == "__main__":
  run()
