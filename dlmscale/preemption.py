"""SIGTERM, the preemption notice: deferred to a step boundary inside the training loop, where the
state is whole and can be saved; anywhere else (start-up, final validation) it stops at once with a
message saying what was kept."""
from __future__ import annotations

import contextlib
import signal


class Preempted(BaseException):
  """SIGTERM arrived; whatever could be saved was saved, and rerunning the command resumes.

  A BaseException, like KeyboardInterrupt: raised from a signal handler it can surface inside any
  library call, and an `except Exception` there (JAX's compilation-cache read catches everything
  and warns) must not swallow it."""


class Sigterm:
  """Installs a SIGTERM handler for its `with` block (main thread only; elsewhere preemption is
  the caller's business). `phase` names what is running, for the message of an immediate stop."""

  def __init__(self, phase: str):
    self.phase = phase
    self.raised = False
    self._defer = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:
      self._previous = None
    return self

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  @contextlib.contextmanager
  def deferred(self):
    """Inside: SIGTERM only sets `raised`, for the loop to save and stop between steps."""
    self._defer = True
    try:
      yield self
    finally:
      self._defer = False

  def _handle(self, signum, frame):
    if self._defer:
      self.raised = True
      return
    raise Preempted(f"SIGTERM received during {self.phase}: rerun the same command to resume")
