"""Optional dependencies: imported where a feature uses them, never at module level.

A base install (`pip install dlmscale`) runs the main path; a feature that needs an extra says
which one on one line when it is asked for.
"""
from __future__ import annotations

import importlib

from dlmscale.errors import DataError


class MissingExtraError(DataError, ImportError):
  """A requested feature needs a package that only one of dlmscale's extras installs."""


def require(module: str, extra: str, feature: str):
  """`module`, imported; MissingExtraError naming `extra` when it is not installed."""
  try:
    return importlib.import_module(module)
  except ImportError:
    raise MissingExtraError(f"{feature} needs {module.split('.')[0]}: "
                            f"pip install 'dlmscale[{extra}]'") from None
