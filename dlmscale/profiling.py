"""train.profile_steps: a jax.profiler trace of a window of training steps.

"START:END" traces steps START .. END-1 (0-based, END excluded, like a slice) into
<workdir>/profile; '' traces nothing. The trace opens in TensorBoard's profile tab
(`tensorboard --logdir <workdir>/profile`, with the tensorboard-plugin-profile package) and in
Perfetto (ui.perfetto.dev: open plugins/profile/<run>/*.trace.json.gz). Skip the first step or
two: they compile.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile

import jax
from etils import epath

from dlmscale.errors import ConfigError

log = logging.getLogger("dlmscale")
PROFILE_DIR = "profile"


def parse_window(spec: str) -> tuple[int, int] | None:
  """'START:END' -> (START, END) with 0 <= START < END; '' -> None; ConfigError otherwise."""
  spec = str(spec or "").strip()
  if not spec:
    return None
  start, sep, end = spec.partition(":")
  try:
    window = int(start), int(end)
  except ValueError:
    window = None
  if not sep or window is None or not 0 <= window[0] < window[1]:
    raise ConfigError(f"train.profile_steps={spec!r} is not START:END with 0 <= START < END: "
                      "write e.g. '10:15' (steps 10 to 14), or '' for no trace")
  return window


class StepProfiler:
  """Starts a trace before step START and stops it before step END (or at close).

  Call step(s, state) before running step s: at END the pending work in `state` is waited for,
  so the trace holds whole steps. A run resumed inside the window traces its remaining steps.
  enabled=False (processes other than the main one) makes every call a no-op."""

  def __init__(self, profile_steps: str, workdir: str, *, enabled: bool = True):
    self.window = parse_window(profile_steps) if enabled else None
    self.logdir = os.path.join(workdir, PROFILE_DIR)
    # jax's profiler writes gs:// through its own client (no emulator, none of epath's settings):
    # on a bucket it traces into a local folder, uploaded through epath when the trace stops.
    self._trace_dir = self.logdir
    self.active = False
    self._done = False

  def step(self, step: int, state=None) -> None:
    if self.window is None or self._done:
      return
    start, end = self.window
    if not self.active and start <= step < end:
      log.info("profiling steps %d to %d into %s", step, end - 1, self.logdir)
      if "://" in self.logdir:
        self._trace_dir = tempfile.mkdtemp(prefix="dlmscale-profile-")
      jax.profiler.start_trace(self._trace_dir, create_perfetto_trace=True)
      self.active = True
    elif self.active and step >= end:
      self.close(state)

  def close(self, state=None) -> None:
    """Stops an open trace (after the steps in flight); called when the loop ends early too."""
    if not self.active:
      return
    if state is not None:
      jax.block_until_ready(state)
    jax.profiler.stop_trace()
    if self._trace_dir != self.logdir:
      _upload(self._trace_dir, epath.Path(self.logdir))
    self.active, self._done = False, True
    log.info("profile written to %s", self.logdir)

  def __enter__(self) -> StepProfiler:
    return self

  def __exit__(self, *exc) -> None:
    self.close()


def _upload(local: str, remote: epath.Path) -> None:
  """Copies the local folder's files to `remote` (same relative paths), then deletes it."""
  for root, _, files in os.walk(local):
    for name in files:
      target = remote / os.path.relpath(os.path.join(root, name), local)
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(epath.Path(root, name).read_bytes())
  shutil.rmtree(local, ignore_errors=True)
