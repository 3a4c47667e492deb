"""A base install (`pip install dlmscale`, no extras) imports every module of the package.

Each module is imported in a fresh interpreter whose import system refuses every top-level module
that is neither the standard library nor installed by dlmscale's base requirements (their
transitive closure, read from the installed metadata), so an optional dependency imported at
module level fails here even though the test extras are installed.
"""
import importlib.metadata
import json
import os
import pkgutil
import re
import subprocess
import sys

import dlmscale

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Modules that exist only to plug into an optional package; importing one without it must fail
# with a one-line ImportError naming the extra.
EXTRA_ONLY = {"dlmscale.lm_eval_adapter": "lm_eval"}

_CHILD = r"""
import importlib, importlib.abc, json, sys
allowed = set(json.loads(sys.argv[1]))

class BaseOnly(importlib.abc.MetaPathFinder):
  # The usual finders, blind to top-level modules outside the base install: both `import` and
  # importlib.util.find_spec then report them missing, as on a base install.
  def __init__(self, finders):
    self.finders = finders
  def find_spec(self, name, path=None, target=None):
    top = name.split(".")[0]
    if not (top in allowed or top in sys.stdlib_module_names or top.startswith("_")):
      return None
    for finder in self.finders:
      spec = finder.find_spec(name, path, target)
      if spec is not None:
        return spec
    return None

sys.meta_path[:] = [BaseOnly(list(sys.meta_path))]
failures = {}
for module in sys.argv[2:]:
  try:
    importlib.import_module(module)
  except Exception as e:
    failures[module] = f"{type(e).__name__}: {e}"
print(json.dumps(failures))
"""


def _norm(name: str) -> str:
  return re.sub(r"[-_.]+", "-", name).lower()


def _base_distributions() -> set[str]:
  """dlmscale's install_requires and, transitively, theirs, with only the extras they name
  (`etils[epath]` brings epath's requirements; dlmscale's own extras bring nothing)."""
  seen, todo = set(), _requirements("dlmscale", ())
  while todo:
    name, extras = todo.pop()
    if (name, extras) in seen:
      continue
    seen.add((name, extras))
    try:
      todo += _requirements(name, extras)
    except importlib.metadata.PackageNotFoundError:
      pass
  return {name for name, _ in seen}


def _requirements(dist: str, extras: tuple) -> list[tuple[str, tuple]]:
  """(name, extras) of `dist`'s requirements that hold with `extras` requested."""
  out = []
  for req in importlib.metadata.requires(dist) or ():
    marker_extra = re.search(r"extra\s*==\s*[\"']([^\"']+)", req)
    if marker_extra and _norm(marker_extra.group(1)) not in extras:
      continue
    m = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?", req)
    wanted = tuple(sorted(_norm(e) for e in (m.group(2) or "").split(",") if e.strip()))
    out.append((_norm(m.group(1)), wanted))
  return out


def _allowed_top_level_modules() -> set[str]:
  base = _base_distributions()
  allowed = {"dlmscale"}
  for module, dists in importlib.metadata.packages_distributions().items():
    if any(_norm(d) in base for d in dists):
      allowed.add(module)
  return allowed


def _modules() -> list[str]:
  return sorted(m.name for m in pkgutil.walk_packages(dlmscale.__path__, "dlmscale."))


def test_base_requirements_are_a_strict_subset_of_what_is_installed():
  """The refusal is real: the test extras' packages are installed but not allowed."""
  allowed = _allowed_top_level_modules()
  assert {"jax", "flax", "optax", "grain", "numpy"} <= allowed
  assert not {"pyarrow", "datasets", "tokenizers", "lm_eval", "pandas", "pytest"} & allowed


def test_every_module_imports_with_only_the_base_requirements():
  modules = _modules()
  assert "dlmscale.main" in modules and "dlmscale.evaluation.tasks.files" in modules
  done = subprocess.run(
      [sys.executable, "-c", _CHILD, json.dumps(sorted(_allowed_top_level_modules())), *modules],
      capture_output=True, text=True, cwd=ROOT, timeout=600, check=True)
  failures = json.loads(done.stdout.strip().splitlines()[-1])
  for module, extra in EXTRA_ONLY.items():
    message = failures.pop(module, "")
    assert f"pip install 'dlmscale[{extra}]'" in message, (module, message)
  assert failures == {}


def test_the_refusal_catches_an_optional_import(tmp_path):
  """A module-level `import pyarrow` is reported, so the check above can fail."""
  (tmp_path / "uses_pyarrow.py").write_text("import pyarrow\n")
  allowed = sorted(_allowed_top_level_modules() | {"uses_pyarrow"})
  done = subprocess.run(
      [sys.executable, "-c", _CHILD, json.dumps(allowed), "uses_pyarrow"], capture_output=True,
      text=True, cwd=tmp_path, timeout=120, check=True,
      env=dict(os.environ, PYTHONPATH=str(tmp_path)))
  failures = json.loads(done.stdout.strip().splitlines()[-1])
  assert failures["uses_pyarrow"] == "ModuleNotFoundError: No module named 'pyarrow'"
