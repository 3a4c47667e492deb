"""Transparent huge pages for the host memory XLA:CPU maps at every step (set at process start).

XLA:CPU allocates one buffer for a program's temporaries at every execution and frees it after
(1.2-2.7 GB for the reference 30M-parameter train step): glibc maps it fresh from the kernel each
time, so every step first touches it 4 KiB page by 4 KiB page (282k-670k page faults per step)
and then walks it through a TLB that holds few of those pages. glibc's `glibc.malloc.hugetlb=1`
tunable makes malloc advise transparent huge pages (2 MiB) on the memory it maps, which the
kernel honours in its default THP mode ('madvise') and in 'always': about 1.7k faults per step,
the reference shape's steady steps 1.09-1.17x faster and the README's quickstart 1.52x faster end
to end (BENCHMARKS.md "Huge pages"). glibc reads tunables only when a process starts, so the CLI
re-executes itself once, first thing, with the tunable added to GLIBC_TUNABLES;
DLMSCALE_HUGEPAGES=off (also 0, false, no) turns that off, =on turns it on where the default is
off (benchmarks/train_throughput.py). A program importing dlmscale as a library gets the same by
starting Python with GLIBC_TUNABLES=glibc.malloc.hugetlb=1.

A cost seen on this project's VMs: the first step of a program whose temporaries need more huge
pages than the process used just before took about 1.8 s longer (fresh 2 MiB blocks are slow to
fault in there), so a process alternating every few steps between programs of different sizes
(the throughput benchmark's interleaved variants) can end up slower; a training run, which
repeats one program, does not.
"""
from __future__ import annotations

import os
import platform
import sys

ENV = "DLMSCALE_HUGEPAGES"
TUNABLE = "glibc.malloc.hugetlb"
_ON, _OFF = ("on", "1", "true", "yes"), ("off", "0", "false", "no")
_THP_MODE = "/sys/kernel/mm/transparent_hugepage/enabled"


def glibc_has_tunable() -> bool:
  name, version = platform.libc_ver()
  if name != "glibc":
    return False
  try:
    major, minor = (int(part) for part in version.split(".")[:2])
  except ValueError:
    return False
  return (major, minor) >= (2, 35)  # the first glibc with glibc.malloc.hugetlb


def thp_mode() -> str:
  """The kernel's THP mode ('always', 'madvise', 'never'), or '' where it cannot be read."""
  try:
    with open(_THP_MODE) as f:
      text = f.read()
  except OSError:
    return ""
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else ""


def environment(environ, *, has_tunable: bool, thp: str, default: bool = True) -> dict | None:
  """The environment to re-execute with (environ plus the tunable), or None where it is turned
  off (DLMSCALE_HUGEPAGES, else `default`) or would change nothing: already set (the user's value
  wins), no glibc tunable, or a kernel without transparent huge pages. ValueError (one line, with
  the fix) for a DLMSCALE_HUGEPAGES that is neither on nor off."""
  asked = environ.get(ENV, "").strip().lower()
  if not asked:
    asked = "on" if default else "off"
  elif asked not in _ON + _OFF:
    raise ValueError(f"{ENV}={environ[ENV]!r} is neither on nor off: set it to on or off "
                     "(or unset it)")
  if asked in _OFF:
    return None
  tunables = environ.get("GLIBC_TUNABLES", "")
  if TUNABLE + "=" in tunables or not has_tunable or thp not in ("always", "madvise"):
    return None
  return dict(environ, GLIBC_TUNABLES=":".join(filter(None, (tunables, TUNABLE + "=1"))))


def reexec_with_hugepages(default: bool = True) -> None:
  """Re-executes this process (same interpreter, same arguments, same PID) with the tunable, at
  most once; returns when it is not needed or turned off (DLMSCALE_HUGEPAGES, else `default`).
  Call it first thing, before anything heavy is imported: everything done before it is done
  twice."""
  if not sys.platform.startswith("linux"):
    return
  try:
    env = environment(os.environ, has_tunable=glibc_has_tunable(), thp=thp_mode(),
                      default=default)
  except ValueError as e:  # before anything is imported or written
    sys.stderr.write(f"error: {e}\n")
    sys.exit(2)
  if env is None:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
