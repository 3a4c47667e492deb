"""Where a run directory may live: a local path or a Google Cloud Storage bucket (gs://).

Every write of a run goes through etils.epath (gcsfs on a bucket), Orbax (TensorStore's gcs driver
for the arrays) or tensorboardX (its own google-cloud-storage writer for event files); all three
are checked against a GCS emulator in tests/test_gcs_rundir.py. Other schemes are refused before
any work, so a typo never becomes a local folder named 'gs:' or a traceback an hour in.
"""
from __future__ import annotations

import re

from dlmscale.errors import ConfigError
from dlmscale.optional import require

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):(/*)")


def is_remote(path) -> bool:
  """True for a URL (gs://...), False for a local path."""
  return "://" in str(path)


def join(path, *parts: str) -> str:
  """`path`/parts as a string; unlike os.path.normpath/join it keeps a URL's '//'."""
  return "/".join([str(path).rstrip("/"), *(p.strip("/") for p in parts)])


def split(path) -> tuple[str, str]:
  """(parent, name) of a local path or URL, ignoring a trailing '/'."""
  parent, _, name = str(path).rstrip("/").rpartition("/")
  return parent, name


def check_location(path, what: str = "--workdir") -> None:
  """ConfigError (or MissingExtraError) unless `path` is local or gs://BUCKET/... with the gcs
  extra installed; called before a mode does any work."""
  if path is None:
    return
  text = str(path)
  match = _SCHEME.match(text)
  if match is None or len(match.group(1)) == 1:  # a relative path, or a drive letter (C:/)
    return
  scheme, slashes = match.group(1).lower(), match.group(2)
  if scheme == "gs" and len(slashes) < 2:
    raise ConfigError(f"{what}={text} is not a bucket URL (gs: needs two slashes): use "
                      "gs://BUCKET/path")
  if len(slashes) < 2:
    return  # 'name:with-colon/...' is a local path
  if scheme != "gs":
    raise ConfigError(f"{what}={text}: {scheme}:// run directories are not supported (local paths "
                      "and gs://BUCKET/path are): use one of those")
  bucket = text[len("gs://"):].split("/", 1)[0]
  if not bucket:
    raise ConfigError(f"{what}={text} names no bucket: use gs://BUCKET/path")
  feature = f"{what}={text} (a run directory on Cloud Storage)"
  require("gcsfs", "gcs", feature)  # etils.epath's backend for gs:// without TensorFlow
  require("google.cloud.storage", "gcs", feature)  # tensorboardX's event files on a bucket
