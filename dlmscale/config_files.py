"""Config files on disk: experiment files (`get_config(arg)`) and the JSON a run saves.

Experiment files import the presets package `configs` of their checkout; a run's
<workdir>/<objective>/config.json (or `--mode=config`'s output) reads back as the same config.
"""
from __future__ import annotations

import importlib.util
import json
import os
import sys

from etils import epath

from dlmscale import storage
from dlmscale.config import default_config
from dlmscale.errors import ConfigError


def add_project_root(config_path: str | None) -> None:
  """Puts the checkout holding `configs/` (found upwards from the config file) on sys.path, so
  a config runs from any working directory."""
  if not config_path:
    return
  here = os.path.dirname(os.path.abspath(config_path))
  while True:
    if os.path.isfile(os.path.join(here, "configs", "__init__.py")):
      if here not in sys.path:
        sys.path.insert(0, here)
      return
    parent = os.path.dirname(here)
    if parent == here:
      return
    here = parent


def load_module(path: str, name: str = "dlmscale_config_file"):
  """An experiment or study file as a module; ConfigError when it is missing or fails to load."""
  if not os.path.isfile(path):
    raise ConfigError(f"config file {path!r} not found: pass an existing experiments/<name>.py")
  add_project_root(path)
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
  except (ImportError, SyntaxError, NameError) as e:
    raise ConfigError(f"config file {path!r} failed to load ({type(e).__name__}: "
                      f"{' '.join(str(e).split())}): fix it or keep it inside the checkout holding "
                      "configs/") from e
  if not hasattr(module, "get_config"):
    raise ConfigError(f"config file {path!r} defines no get_config(): add one")
  return module


def load_config(spec: str):
  """The config of 'FILE[:ARG]' as --config loads it: FILE.json is a saved config, FILE.py's
  get_config(ARG) (get_config() without ARG) anything else."""
  path, _, arg = str(spec).partition(":")
  if path.endswith(".json"):
    return saved_config(path)
  module = load_module(path)
  return module.get_config(arg) if arg else module.get_config()


def saved_config(path: str):
  """A config saved as JSON (a run's config.json, --mode=config's output) over the defaults;
  local or on a bucket (gs://)."""
  storage.check_location(path, "--config")
  if not epath.Path(path).is_file():
    raise ConfigError(f"{path} not found: pass a run's <workdir>/<objective>/config.json or the "
                      "output of --mode=config")
  try:
    saved = json.loads(epath.Path(path).read_text())
  except (OSError, ValueError) as e:
    raise ConfigError(f"{path} is not a readable JSON config ({e}): pass a run's config.json")
  cfg = default_config()
  cfg.update(_tuples(saved))  # JSON turned the config's tuples into lists
  return cfg


def _tuples(value):
  if isinstance(value, dict):
    return {k: _tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_tuples(v) for v in value)
  return value


def run_config_path(workdir: str) -> str | None:
  """The saved config.json of the first objective trained in `workdir` (local or gs://), if any."""
  storage.check_location(workdir)
  root = epath.Path(workdir)
  if not root.is_dir():
    return None
  for name in sorted(p.name for p in root.iterdir()):
    if (root / name / "config.json").is_file():
      return storage.join(workdir, name, "config.json")
  return None
