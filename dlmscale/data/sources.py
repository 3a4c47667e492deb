"""Document sources: deterministic iterators of (name, text)."""
import os
import sysconfig
from typing import Iterator

from dlmscale.data.errors import DataError

_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_THIRD_PARTY_DIRS = frozenset({"site-packages", "dist-packages"})


def python_stdlib_documents(include_tests: bool = False,
                            stats: dict | None = None) -> Iterator[tuple[str, str]]:
  """Yields (relative posix path, text) for the running Python's stdlib .py files.

  Sorted by path so the corpus is identical on any machine with the same Python.
  Files that are not valid UTF-8 are skipped and counted in stats["undecodable"].
  """
  root = sysconfig.get_paths()["stdlib"]
  skip = _THIRD_PARTY_DIRS if include_tests else _THIRD_PARTY_DIRS | _TEST_DIRS
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in skip]
    rel_dir = os.path.relpath(dirpath, root)
    for f in filenames:
      if f.endswith(".py"):
        paths.append(os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/"))
  if stats is not None:
    stats.update(documents=0, undecodable=0)
  for rel in sorted(paths):
    with open(os.path.join(root, rel), "rb") as fh:
      raw = fh.read()
    try:
      text = raw.decode("utf-8")
    except UnicodeDecodeError:
      if stats is not None:
        stats["undecodable"] += 1
      continue
    if stats is not None:
      stats["documents"] += 1
    yield rel, text


_SOURCES = {"python_stdlib": python_stdlib_documents}


def get_documents(corpus: str, **kw) -> Iterator[tuple[str, str]]:
  """Returns the document iterator of a registered corpus."""
  if corpus not in _SOURCES:
    raise DataError(f"unknown corpus {corpus!r}; use one of {sorted(_SOURCES)}")
  return _SOURCES[corpus](**kw)
