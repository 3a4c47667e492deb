"""CLI: python -m dlmscale.main --config=FILE[:ARGS] [--workdir=DIR] [--mode=MODE].

Parses flags and hands them to one function of dlmscale.modes (whose docstring lists the modes).
The console script also takes the mode as a subcommand: `dlmscale prepare --config=...`.
--config=FILE.json reads a saved config (a run's config.json, --mode=config's output); in eval,
sample and code modes --config may be left out: the run's own saved config is used.
"""
from __future__ import annotations

import inspect
import logging
import os
import re
import signal
import sys
import threading
import warnings

from dlmscale import host_memory  # the standard library only: cheap before the re-exec


def _exit_on_early_sigterm(signum, frame) -> None:
  """SIGTERM while the CLI is still importing (JAX takes seconds): nothing exists yet to save."""
  sys.stderr.write("SIGTERM received during start-up: nothing was written; rerun the same "
                   "command\n")
  sys.stderr.flush()
  os._exit(143)


if __name__ == "__main__" or os.path.basename(sys.argv[0]) == "dlmscale":
  host_memory.reexec_with_hugepages()  # first: whatever runs before it runs twice
  signal.signal(signal.SIGTERM, _exit_on_early_sigterm)

from absl import app, flags  # noqa: E402  (after the handler: these import JAX)
from ml_collections import config_flags  # noqa: E402

from dlmscale import config_files  # noqa: E402
from dlmscale.preemption import Preempted  # noqa: E402

MODES = ("train", "eval", "sample", "code", "prepare", "fingerprint", "compile", "config",
         "sweep", "plan", "analyze", "export")
_NO_CONFIG_MODES = ("sweep", "plan", "analyze")
_WORKDIR_MODES = ("train", "eval", "sample", "code", "sweep", "export")
_SAVED_CONFIG_MODES = ("eval", "sample", "code", "export")
_JSON_CONFIG_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "json_config.py")

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory (a sweep's: one sub-directory "
                               "per run).")
_MODE = flags.DEFINE_enum("mode", "train", list(MODES), "What to do; see dlmscale/modes.py.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "compile / plan: a TPU slice, e.g. v5p-64; "
                                "plan also takes GPUs, e.g. 8xH100.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", None, "e.g. 'gloo' for multi-process CPU.")
_MULTIHOST = flags.DEFINE_bool("multihost", False, "Join a multi-host job whose peers jax finds "
                               "itself (Cloud TPU slices, Slurm, Open MPI).")
# Studies: sweep and plan.
_STUDY = flags.DEFINE_string("study", None, "sweep / plan: a study file, e.g. "
                             "experiments/crossover.py.")
_SCALE = flags.DEFINE_string("scale", None, "sweep / plan: the study's scale (cpu, gpu, paper).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False, "sweep: print each run's command, workdir and "
                             "token budget; launch nothing.")
_LAUNCHER = flags.DEFINE_enum("launcher", "local", ["local", "tpu_vm", "xpk"],
                              "sweep: run locally, or generate Cloud TPU VM / xpk commands.")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "sweep: local runs at a time. Arguments after "
                                  "`--` are passed to every run's dlmscale.main.")
_YES = flags.DEFINE_bool("yes", False, "sweep: run the generated cloud commands.")
_LAUNCH_OPTIONS = flags.DEFINE_multi_string(
    "launch", [], "sweep: a launcher option key=value (repeatable), e.g. --launch=project=my-proj "
    "--launch=zone=us-east5-a; see dlmscale/launchers.py.")
_MFU = flags.DEFINE_float("mfu", 0.4, "plan: the model FLOPs utilisation chip-hours assume.")
_PLAN_COMPILE = flags.DEFINE_bool("compile", False, "plan: also compile each run for --topology "
                                  "(per-chip memory; needs libtpu).")
# Analysis across runs.
_RUNS = flags.DEFINE_list("runs", [], "analyze: run or sweep directories, comma-separated.")
_OUT = flags.DEFINE_string("out", None, "analyze: where the table, summary and plots go; "
                           "export: the Hugging Face model directory to write.")
_METRIC = flags.DEFINE_string("metric", "val", "analyze: the headline metric, 'val' or "
                              "'<task>/<metric>' (e.g. heldout/acc).")
_FORCE = flags.DEFINE_bool("force", False, "analyze: compare runs that are not token-matched.")
_PLOTS = flags.DEFINE_bool("plots", True, "analyze: draw PNG plots (the 'plot' extra).")
_PREPARE_ENGINE = flags.DEFINE_enum("prepare_engine", "local", ["local", "beam"], "prepare: "
                                    "'local' (data.workers processes) or 'beam' (Apache Beam; "
                                    "the 'beam' extra). Both write the same bytes.")
_BEAM_OPTIONS = flags.DEFINE_string("beam_options", "", "prepare --prepare_engine=beam: Beam "
                                    "pipeline options, e.g. '--runner=DirectRunner "
                                    "--direct_num_workers=4 --direct_running_mode=multi_processing'.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def _flag_value(argv, name: str) -> str | None:
  for i, arg in enumerate(argv):
    if arg.startswith((f"--{name}=", f"-{name}=")):
      return arg.split("=", 1)[1]
    if arg in (f"--{name}", f"-{name}") and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _with_config_file(argv: list[str]) -> list[str]:
  """A saved JSON config becomes json_config.py:PATH; eval/sample/code without --config read the
  run's own saved config."""
  spec = _flag_value(argv, "config")
  if spec is None:
    workdir = _flag_value(argv, "workdir")
    if _flag_value(argv, "mode") in _SAVED_CONFIG_MODES and workdir:
      own = os.path.join(workdir, "config.json")  # export: --workdir=RUN/<objective>
      saved = own if os.path.isfile(own) else config_files.run_config_path(workdir)
      if saved is None:
        _fail(f"no saved config in {workdir}/<objective>/config.json: pass --config, or point "
              "--workdir at a trained run")
      # Before any --config.* override: absl defines those flags when it reads --config.
      return [argv[0], f"--config={_JSON_CONFIG_FILE}:{saved}", *argv[1:]]
    return argv
  if spec.split(":", 1)[0].endswith(".json"):
    json_path = spec.split(":", 1)[0]
    return [f"--config={_JSON_CONFIG_FILE}:{json_path}" if a.startswith(("--config=", "-config="))
            else a for a in argv]
  return argv


def _parse_flags(argv):
  """absl's parser, but a bad flag or config override is a one-line error, not a traceback."""
  from dlmscale.errors import DlmscaleError
  try:
    argv = _with_config_file(argv)  # may look in --workdir: a bad one (e.g. s3://) is one line
  except DlmscaleError as e:
    _fail(str(e))
  config_path = (_flag_value(argv, "config") or "").split(":", 1)[0] or None
  config_files.add_project_root(config_path)
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _fail(_config_file_error(str(e), config_path) or " ".join(str(e).split()))
  except DlmscaleError as e:
    _fail(str(e))
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


def _config_file_error(message: str, config_path: str | None) -> str | None:
  """ml_collections reports an exception raised by get_config(arg) as a flag error holding the
  whole traceback; its last line is what the user needs."""
  if "Error whilst parsing config file" not in message:
    return None
  last = message.strip().splitlines()[-1]
  kind, _, text = last.partition(": ")
  if kind.startswith("dlmscale."):  # e.g. a study naming its valid arguments
    return text
  if kind == "TypeError" and "get_config" in text:
    return (f"config file {config_path!r} takes no argument after ':' ({text}): pass it without "
            "':...'")
  return f"config file {config_path!r} failed in get_config ({last}): fix the file or its argument"


def _config_spec() -> str | None:
  """--config as given (FILE[:ARGS]), or None."""
  if _CONFIG.value is None:
    return None
  return config_flags.get_config_filename(flags.FLAGS["config"])


def main(argv) -> None:
  mode = _MODE.value
  if len(argv) > 1 and mode != "sweep":
    _fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
  spec = _config_spec()
  if spec is None and mode not in _NO_CONFIG_MODES:
    _fail("--config is required, e.g. --config=experiments/quickstart.py")
  if spec is not None and not os.path.isfile(spec.split(":", 1)[0]):
    _fail(f"config file {spec.split(':', 1)[0]!r} not found: pass --config=path/to/experiment.py")
  if not _WORKDIR.value and mode in _WORKDIR_MODES:
    _fail(f"--workdir is required for --mode={mode}, e.g. --workdir=runs/quickstart")
  _configure_logging()
  from dlmscale import modes  # after flag parsing: keeps --help fast
  from dlmscale.errors import DlmscaleError
  try:
    modes.run(mode, modes.Options(
        cfg=_CONFIG.value, config_spec=spec, workdir=_WORKDIR.value, topology=_TOPOLOGY.value,
        study=_STUDY.value, scale=_SCALE.value, dry_run=_DRY_RUN.value, launcher=_LAUNCHER.value,
        parallel=_PARALLEL.value, yes=_YES.value, launch_options=tuple(_LAUNCH_OPTIONS.value),
        mfu=_MFU.value, compile=_PLAN_COMPILE.value, runs=tuple(_RUNS.value), out=_OUT.value,
        metric=_METRIC.value, force=_FORCE.value, plots=_PLOTS.value,
        prepare_engine=_PREPARE_ENGINE.value, beam_options=_BEAM_OPTIONS.value,
        distributed=(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                     _CPU_COLLECTIVES.value, _MULTIHOST.value), run_args=tuple(argv[1:])))
  except modes.INTERRUPTED as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(143)
  except modes.FAILED as e:
    print(f"error: {e}", file=sys.stderr, flush=True)
    sys.exit(1)
  except DlmscaleError as e:
    _fail(str(e))


def _configure_logging() -> None:
  # force: absl.app installed its own handler (with a verbose prefix) before main() runs.
  logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)
  # fsspec, gcsfs: gs:// run directories. torch: tensorboardX imports it; a SIGTERM during that
  # import leaves torch's atexit "FakeTensor cache stats" lines after the one-line message.
  for noisy in ("absl", "orbax", "jax", "fsspec", "gcsfs", "torch"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  # Orbax logs a failed save's traceback from its own thread; dlmscale reports it on one line.
  logging.getLogger("absl").addFilter(_drop_orbax_errors)
  logging.getLogger("asyncio").addFilter(_drop_unretrieved_errors)


def _drop_orbax_errors(record: logging.LogRecord) -> bool:
  return not (record.levelno >= logging.ERROR and f"{os.sep}orbax{os.sep}" in record.pathname)


def _drop_unretrieved_errors(record: logging.LogRecord) -> bool:
  """When one of a failed save's writes fails (a full disk), the others' futures fail too and
  asyncio logs each with its traceback ("_GatheringFuture exception was never retrieved") when it
  is collected, which may be after the one-line error; dlmscale runs no coroutines itself."""
  return "exception was never retrieved" not in record.getMessage()


def _handle_unraisable(unraisable, _default=sys.unraisablehook) -> None:
  """When an Orbax restore fails, the TensorStore reads still in flight call back into the event
  loop Orbax already closed, and their coroutines are collected unfinished; their tracebacks would
  bury the one-line error, so they are dropped (dlmscale itself runs no coroutines)."""
  exc = unraisable.exc_value
  if isinstance(exc, Preempted):
    # The SIGTERM handler ran inside a callback whose exceptions Python ignores (a gc callback of
    # JAX's): deliver the signal again, from outside this hook (where it would be ignored too), to
    # be raised where it can stop the program.
    resend = threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGTERM))
    resend.daemon = True
    resend.start()
    return
  if isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed":
    return
  if inspect.iscoroutine(unraisable.object) or inspect.isasyncgen(unraisable.object):
    return
  _default(unraisable)


def _subcommand_to_flag(argv: list[str]) -> list[str]:
  """`dlmscale prepare --config=...` is `--mode=prepare --config=...`."""
  if len(argv) > 1 and argv[1] in MODES:
    return [argv[0], f"--mode={argv[1]}", *argv[2:]]
  return argv


def _stop_on_sigterm(signum, frame) -> None:
  """SIGTERM outside a training loop (which saves first): stop now, saying so. Training installs
  its own handler."""
  mode = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--mode=")), "train")
  raise Preempted(f"SIGTERM received during --mode={mode} start-up or between runs: nothing "
                  "was lost; rerun the same command (training resumes from its last checkpoint)")


def run() -> None:
  sys.argv = _subcommand_to_flag(sys.argv)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  sys.unraisablehook = _handle_unraisable
  warnings.filterwarnings("ignore", message=r"coroutine .* was never awaited")
  signal.signal(signal.SIGTERM, _stop_on_sigterm)
  try:
    app.run(main, flags_parser=_parse_flags)
  except Preempted as e:  # before main() could catch it (flag parsing, imports)
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(143)


if __name__ == "__main__":
  run()
