"""Small files of a run directory (config.json, provenance.json), written whole or not at all,
through etils.epath so a run directory can live on a bucket."""
from __future__ import annotations

import json
import uuid

from etils import epath

from dlmscale.errors import RunIOError


def write_text_atomic(path, text: str) -> None:
  """Writes a sibling temporary file, then renames it over `path`: readers never see half a file."""
  path = epath.Path(path)
  if "://" in str(path):  # an object upload is already all or nothing; a rename is copy + delete
    path.write_text(text)
    return
  tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
  try:
    tmp.write_text(text)
    tmp.replace(path)
  finally:
    if tmp.exists():
      tmp.unlink()


def read_json(path):
  """The JSON document at `path`, or None when there is no such file."""
  path = epath.Path(path)
  if not path.exists():
    return None
  return json.loads(path.read_text())


def ensure_writable_dir(path, what: str = "--workdir") -> epath.Path:
  """Creates `path` if needed and proves a file can be written there, before any work starts."""
  path = epath.Path(path)
  if path.exists() and not path.is_dir():
    raise RunIOError(f"{what} {path} is a file: pass a directory (new or existing)")
  probe = path / f".dlmscale-write-test-{uuid.uuid4().hex[:8]}"
  try:
    path.mkdir(parents=True, exist_ok=True)
    probe.write_text("")
    probe.unlink()
  except OSError as e:
    raise RunIOError(f"{what} {path} is not writable ({type(e).__name__}: {e.strerror or e}): "
                     "pick a directory you can write to, or fix its permissions") from None
  return path
