"""Progress of long loops (evaluation, sampling, code execution, preparation): a bar with an ETA
while they run, one log line when each finishes.

DLMSCALE_PROGRESS picks the display: 'auto' (the default: a tqdm bar when stderr is a terminal,
else a plain log line every 30 s, so batch logs stay readable), 'bar', 'log', or 'off' (only the
closing line). The closing line is always logged ('dlmscale' logger, INFO). Only the main process
of a multi-host job shows progress, unless `enabled` says otherwise.
"""
from __future__ import annotations

import logging
import math
import os
import sys
import time

from dlmscale.errors import ConfigError

log = logging.getLogger("dlmscale")
ENV = "DLMSCALE_PROGRESS"
DISPLAYS = ("auto", "bar", "log", "off")
LOG_INTERVAL_S = 30.0


def display() -> str:
  """What DLMSCALE_PROGRESS asks for, with 'auto' resolved: 'bar', 'log' or 'off'."""
  value = os.environ.get(ENV, "").strip().lower() or "auto"
  if value not in DISPLAYS:
    raise ConfigError(f"{ENV}={value!r} is not one of {list(DISPLAYS)}: unset it or pick one")
  if value == "auto":
    return "bar" if sys.stderr.isatty() else "log"
  return value


def duration(seconds: float) -> str:
  """'4.2s' under a minute, then '3m07s', then '2h05m'; '?' when unknown."""
  if not math.isfinite(seconds):
    return "?"
  if seconds < 60:
    return f"{seconds:.1f}s"
  m, s = divmod(int(seconds), 60)
  h, m = divmod(m, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def _main_process() -> bool:
  import jax  # the backend is up wherever a model runs; data preparation passes enabled=True
  return jax.process_index() == 0


class Progress:
  """`total` units of work (None: unknown, so no ETA) shown as they are done.

  Use as a context manager (or call close): leaving normally logs
  '[desc] N unit in T (R unit/s)' plus any `summary` set on the object; leaving on an exception
  logs nothing more, the exception says what happened."""

  def __init__(self, desc: str, total: int | None = None, unit: str = "it", *,
               enabled: bool | None = None):
    self.desc, self.total, self.unit = desc, total, unit
    self.count = 0
    self.summary = ""
    self.enabled = _main_process() if enabled is None else enabled
    self._start = self._last_line = time.monotonic()
    self._mode = display() if self.enabled else "off"
    self._bar = None
    if self._mode == "bar":
      from tqdm import tqdm  # imported here: only a terminal shows a bar
      self._bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, leave=False)

  def update(self, n: int = 1) -> None:
    self.count += n
    if self._bar is not None:
      self._bar.update(n)
    elif self._mode == "log" and time.monotonic() - self._last_line >= LOG_INTERVAL_S:
      self._last_line = time.monotonic()
      log.info("%s", self.status())

  def status(self) -> str:
    """'[desc] 120/400 req (30%), 12.0 req/s, eta 29.2s' (count, rate and ETA so far)."""
    elapsed = time.monotonic() - self._start
    rate = self.count / elapsed if elapsed > 0 else math.nan
    if not self.total:
      return f"[{self.desc}] {self.count:,} {self.unit}, {rate:,.1f} {self.unit}/s"
    eta = (self.total - self.count) / rate if rate > 0 else math.inf
    return (f"[{self.desc}] {self.count:,}/{self.total:,} {self.unit} "
            f"({100 * self.count / self.total:.0f}%), {rate:,.1f} {self.unit}/s, "
            f"eta {duration(eta)}")

  def close(self, finished: bool = True) -> None:
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    if finished and self.enabled:
      elapsed = time.monotonic() - self._start
      rate = f", {self.count / elapsed:,.1f} {self.unit}/s" if elapsed > 0 else ""
      summary = f": {self.summary}" if self.summary else ""
      log.info("[%s] %s %s in %s%s%s", self.desc, f"{self.count:,}", self.unit,
               duration(elapsed), rate, summary)
    self.enabled = False  # a second close says nothing

  def __enter__(self) -> Progress:
    return self

  def __exit__(self, exc_type, exc, tb) -> None:
    self.close(finished=exc_type is None)
