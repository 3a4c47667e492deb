"""User-facing errors: each carries a one-line message that names the problem and the fix."""


class DlmscaleError(Exception):
  """Bad input or state the user can fix; the CLI prints it on one line and exits non-zero."""


class ConfigError(DlmscaleError, ValueError):
  """The config is malformed or inconsistent."""


class DataError(DlmscaleError, ValueError):
  """Bad data input; the message names the problem and the fix on one line."""


class CheckpointError(DlmscaleError):
  """A checkpoint is missing, unreadable or belongs to a different run."""


class NonFiniteLossError(DlmscaleError):
  """Training produced NaN/Inf; nothing past the last good checkpoint was saved."""


class RunIOError(DlmscaleError):
  """A run's file could not be written or read (full disk, permissions, storage errors)."""
