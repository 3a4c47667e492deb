"""Huge pages for malloc (dlmscale/host_memory.py): when the CLI re-executes itself (by default,
unless DLMSCALE_HUGEPAGES=off), that the re-executed process keeps its PID and arguments, and
that the tunable really cuts page faults."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from dlmscale import host_memory

REPO = Path(__file__).resolve().parents[1]
ON = f"{host_memory.TUNABLE}=1"
USABLE = (sys.platform.startswith("linux") and host_memory.glibc_has_tunable()
          and host_memory.thp_mode() in ("always", "madvise"))
needs_thp = pytest.mark.skipif(not USABLE, reason="needs Linux, glibc >= 2.35 and transparent "
                               "huge pages ('always' or 'madvise')")


def _env(**overrides):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", host_memory.ENV)}
  env.update(overrides)
  return env


ASKED = {host_memory.ENV: "on"}


@pytest.mark.parametrize("environ,has_tunable,thp,want", [
    (ASKED, True, "madvise", ON),
    (ASKED, True, "always", ON),
    ({host_memory.ENV: " Yes "}, True, "madvise", ON),
    (dict(ASKED, GLIBC_TUNABLES="glibc.malloc.arena_max=2"), True, "madvise",
     f"glibc.malloc.arena_max=2:{ON}"),  # the user's other tunables are kept
    (dict(ASKED, GLIBC_TUNABLES=f"{host_memory.TUNABLE}=0"), True, "madvise", None),  # theirs wins
    ({}, True, "madvise", ON),  # on by default
    ({host_memory.ENV: "off"}, True, "madvise", None),
    ({host_memory.ENV: " No "}, True, "madvise", None),
    (ASKED, False, "madvise", None),  # musl, or glibc < 2.35
    (ASKED, True, "never", None),
    (ASKED, True, "", None),  # no THP in this kernel
])
def test_environment_adds_the_tunable_only_where_asked_and_useful(environ, has_tunable, thp,
                                                                  want):
  got = host_memory.environment(dict(environ, PATH="/bin"), has_tunable=has_tunable, thp=thp)
  off_by_default = host_memory.environment(dict(environ, PATH="/bin"), has_tunable=has_tunable,
                                           thp=thp, default=False)
  assert off_by_default == (got if environ.get(host_memory.ENV) else None)  # only if asked
  if want is None:
    assert got is None
  else:
    assert got["GLIBC_TUNABLES"] == want and got["PATH"] == "/bin"


_REPORT = textwrap.dedent("""\
    import os, sys
    from dlmscale import host_memory
    host_memory.reexec_with_hugepages(default=sys.argv[1] == "default-on")
    print(os.getpid(), os.environ.get("GLIBC_TUNABLES", ""), sys.argv[1:])
    """)


@needs_thp
def test_reexec_keeps_pid_and_arguments_and_happens_once():
  proc = subprocess.Popen([sys.executable, "-c", _REPORT, "default-on", "a b", "--x=1"],
                          cwd=REPO, env=_env(), stdout=subprocess.PIPE, text=True)
  out, _ = proc.communicate(timeout=60)
  assert proc.returncode == 0
  assert out.strip() == f"{proc.pid} {ON} ['default-on', 'a b', '--x=1']"  # one line: one exec


@needs_thp
@pytest.mark.parametrize("default,asked", [("default-on", {host_memory.ENV: "off"}),
                                           ("default-off", {})])
def test_no_reexec_when_turned_off(default, asked):
  proc = subprocess.Popen([sys.executable, "-c", _REPORT, default], cwd=REPO,
                          env=_env(**asked), stdout=subprocess.PIPE, text=True)
  out, _ = proc.communicate(timeout=60)
  assert out.split() == [str(proc.pid), f"['{default}']"]  # no tunable


_FAULTS = textwrap.dedent("""\
    import ctypes, resource
    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    size = 256 << 20  # above malloc's mmap threshold: fresh pages from the kernel, as XLA's
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    ctypes.memset(libc.malloc(size), 1, size)
    print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    """)


def test_a_value_neither_on_nor_off_is_one_line_error_naming_the_fix():
  with pytest.raises(ValueError, match="DLMSCALE_HUGEPAGES='maybe' is neither on nor off"):
    host_memory.environment({host_memory.ENV: "maybe"}, has_tunable=True, thp="madvise")
  proc = subprocess.run([sys.executable, "-m", "dlmscale.main", "--mode=config",
                         f"--config={REPO / 'tests' / 'configs' / 'tiny.py'}"],
                        cwd=REPO, env=_env(**{host_memory.ENV: "maybe"}), capture_output=True,
                        text=True, timeout=60)
  assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
  assert proc.stderr.strip().splitlines() == [
      f"error: {host_memory.ENV}='maybe' is neither on nor off: set it to on or off (or unset it)"]


@needs_thp
def test_the_tunable_cuts_first_touch_page_faults():
  faults = {}
  for name, env in (("small pages", _env()), ("huge pages", _env(GLIBC_TUNABLES=ON))):
    faults[name] = int(subprocess.run([sys.executable, "-c", _FAULTS], env=env, timeout=60,
                                      capture_output=True, text=True, check=True).stdout)
  pages = (256 << 20) // 4096
  assert faults["small pages"] > pages // 2, faults  # the baseline faults page by page...
  assert faults["huge pages"] < pages // 20, faults  # ...2 MiB pages need 1/512 of those


@needs_thp
def test_the_cli_runs_reexecuted_with_the_tunable_by_default():
  """/proc/PID/environ is the environment of the PID's current program: after the re-exec, the
  CLI's (which then spends a second or more importing JAX)."""
  proc = subprocess.Popen(
      [sys.executable, "-m", "dlmscale.main", "--mode=config",
       f"--config={REPO / 'tests' / 'configs' / 'tiny.py'}"],
      cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  seen = ""
  deadline = time.monotonic() + 60
  while proc.poll() is None and time.monotonic() < deadline and ON not in seen:
    try:
      seen = Path(f"/proc/{proc.pid}/environ").read_bytes().decode(errors="replace")
    except OSError:
      break
    time.sleep(0.01)
  _, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-2000:]
  assert f"GLIBC_TUNABLES={ON}" in seen.split("\0"), "the CLI did not re-execute itself"
