"""CLI: python -m dlmscale.main --config=FILE[:arg] --workdir=DIR [--mode=train|eval]."""
from __future__ import annotations

import logging
import os
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Experiment config file (get_config).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, config.")
_MODE = flags.DEFINE_enum("mode", "train", ["train", "eval"],
                          "train: train every objective and validate; eval: validate checkpoints.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "host:port of process 0.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-host job.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index.")
_CPU_COLLECTIVES = flags.DEFINE_string("cpu_collectives", None, "e.g. 'gloo' for multi-process CPU.")


def _fail(message: str) -> None:
  print(f"error: {message}", file=sys.stderr, flush=True)
  sys.exit(2)


def main(argv) -> None:
  if len(argv) > 1:
    _fail(f"unexpected arguments {argv[1:]}: pass options as --flag=value")
  if _CONFIG.value is None:
    _fail("--config is required, e.g. --config=experiments/quickstart.py")
  if not _WORKDIR.value:
    _fail("--workdir is required, e.g. --workdir=runs/quickstart")
  logging.basicConfig(level=logging.INFO, format="%(message)s")
  for noisy in ("absl", "orbax", "jax"):
    logging.getLogger(noisy).setLevel(logging.WARNING)
  from dlmscale import experiment  # after flag parsing: keeps --help fast
  from dlmscale.errors import DlmscaleError
  from dlmscale.data import DataError
  from dlmscale.parallel import maybe_initialize_distributed
  try:
    maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                 _CPU_COLLECTIVES.value)
    if _MODE.value == "train":
      experiment.train_all(_CONFIG.value, _WORKDIR.value)
    else:
      experiment.evaluate_all(_CONFIG.value, _WORKDIR.value)
  except experiment.Preempted as e:
    print(str(e), file=sys.stderr, flush=True)
    sys.exit(143)
  except (DlmscaleError, DataError) as e:
    _fail(str(e))


def run() -> None:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  app.run(main)


if __name__ == "__main__":
  run()
