"""Experiment files on disk: they import the presets package `configs` of their checkout."""
from __future__ import annotations

import os
import sys


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
