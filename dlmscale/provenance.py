"""Where a run came from: every start and resume of a run appends one record to provenance.json
(package versions, source revision, data and stream fingerprints, devices), next to config.json."""
from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import socket
import subprocess

import jax

from dlmscale.run_files import read_json, write_text_atomic

PACKAGES = ("dlmscale", "jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "numpy")


def package_versions() -> dict[str, str | None]:
  out = {}
  for name in PACKAGES:
    try:
      out[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      out[name] = None
  return out


def source_revision() -> dict | None:
  """The git commit of the dlmscale source tree (and whether it had uncommitted changes), if the
  package runs from a checkout."""
  here = os.path.dirname(os.path.abspath(__file__))
  try:
    run = lambda *args: subprocess.run(["git", "-C", here, *args], capture_output=True, text=True,
                                       timeout=10, check=True).stdout.strip()
    return {"commit": run("rev-parse", "HEAD"), "dirty": bool(run("status", "--porcelain", "."))}
  except (OSError, subprocess.SubprocessError):
    return None


def devices() -> dict:
  d = jax.devices()
  return {"platform": d[0].platform, "device_kind": d[0].device_kind,
          "device_count": len(d), "process_count": jax.process_count(),
          "local_device_count": jax.local_device_count()}


def start_record(*, config_json: str, start_step: int, mesh_shape: dict, data: dict) -> dict:
  """One start (start_step 0) or resume of a run."""
  return {"time": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
          "start_step": int(start_step), "host": socket.gethostname(),
          "python": platform.python_version(), "packages": package_versions(),
          "source": source_revision(),
          "config_sha256": hashlib.sha256(config_json.encode()).hexdigest(),
          "devices": devices(), "mesh": {k: int(v) for k, v in mesh_shape.items()}, "data": data}


def append(workdir, record: dict) -> None:
  path = f"{str(workdir).rstrip('/')}/provenance.json"
  doc = read_json(path) or {"starts": []}
  doc["starts"].append(record)
  write_text_atomic(path, json.dumps(doc, indent=1, sort_keys=True) + "\n")
