"""JAX's persistent compilation cache, on by default for every CLI mode.

A resumed or repeated run then loads its compiled programs from disk instead of recompiling them
(paper-size steps take minutes to compile). Where it goes, first match wins:
  DLMSCALE_COMPILATION_CACHE  a directory, or 'off' (also '0', 'false', 'none') to disable;
  JAX_COMPILATION_CACHE_DIR   JAX's own setting, left as the user gave it;
  $XDG_CACHE_HOME/dlmscale/jax_cache (~/.cache/dlmscale/jax_cache without XDG_CACHE_HOME).
JAX caches programs that took over jax_persistent_cache_min_compile_time_secs (1 s) to compile;
set JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS to change that. The directory is trusted: whoever
can write to it can run code in your runs, so keep it private.
"""
from __future__ import annotations

import os

import jax

ENV = "DLMSCALE_COMPILATION_CACHE"
_OFF = ("off", "0", "false", "none", "no")


def default_dir() -> str:
  base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(base, "dlmscale", "jax_cache")


def cache_dir() -> str | None:
  """The directory this process should use (see the module docstring); None: disabled."""
  value = os.environ.get(ENV, "").strip()
  if value.lower() in _OFF:
    return None
  if value:  # a bucket URL (JAX writes gs:// itself) is kept whole
    return value if "://" in value else os.path.abspath(os.path.expanduser(value))
  return os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_dir()


def enable() -> str | None:
  """Points JAX at cache_dir() (before the first compilation: JAX reads it once); returns it.

  Disabled, it also clears a directory JAX took from its own environment variable, so 'off'
  means off."""
  path = cache_dir()
  if path is None:
    jax.config.update("jax_compilation_cache_dir", None)
    return None
  if "://" not in path:  # JAX writes gs:// itself; a local directory may need creating
    os.makedirs(path, exist_ok=True)
  jax.config.update("jax_compilation_cache_dir", path)
  return path
