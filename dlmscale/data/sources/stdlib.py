"""The running Python's standard library as a code corpus: always present, no download."""
import os
import sysconfig
from typing import Iterator

from dlmscale.data.sources.base import Document, SourceContext, decode_utf8, register
from dlmscale.data.spec import Spec, take_options

_TEST_DIRS = frozenset({"test", "tests", "idle_test"})
_THIRD_PARTY_DIRS = frozenset({"site-packages", "dist-packages"})


def stdlib_paths(include_tests: bool = False) -> tuple[str, list[str]]:
  """(stdlib root, sorted relative posix paths of its .py files)."""
  root = sysconfig.get_paths()["stdlib"]
  skip = _THIRD_PARTY_DIRS if include_tests else _THIRD_PARTY_DIRS | _TEST_DIRS
  paths = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = [d for d in dirnames if d not in skip]
    rel_dir = os.path.relpath(dirpath, root)
    for f in filenames:
      if f.endswith(".py"):
        paths.append(os.path.normpath(os.path.join(rel_dir, f)).replace(os.sep, "/"))
  return root, sorted(paths)


@register("python_stdlib")
def python_stdlib_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """`python_stdlib[?include_tests=true]`: (relative path, text), sorted by path.

  Sorted relative paths make the corpus identical on any machine with the same Python.
  """
  opts = take_options(spec, {"include_tests": False}, "source")
  root, paths = stdlib_paths(opts["include_tests"])
  for rel in paths:
    with open(os.path.join(root, rel), "rb") as fh:
      text = decode_utf8(fh.read(), os.path.join(root, rel), ctx)
    if text is not None:
      yield rel, text
