"""Errors raised for bad data inputs."""
from dlmscale.errors import DlmscaleError


class DataError(DlmscaleError, ValueError):
  """Bad data input; the message names the problem and the fix on one line."""
