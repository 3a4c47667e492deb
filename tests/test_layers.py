"""The package's import graph: layered, no cycles, no upward imports (imports inside function
bodies included), and one module owning the CLI modes.

Layers, bottom to top; a module may import its own layer and those below:
  core        models, objectives, corruption, data, parallel, train, checkpoint, optim, flops, ...
  components  evaluation (likelihoods, tasks, scoring, code), sampling
  schema      config: it validates every section, so it sits above what it checks
  assembly    config_files, json_config, experiment (one place builds a run)
  tools       runner, compile, planner, sweep, launchers, analysis
  entry       modes (every CLI mode), lm_eval_adapter
  cli         main (flags and dispatch only)
"""
import ast
import os

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "dlmscale")
LAYERS = [
    ("core", ("dlmscale.errors", "dlmscale.optional", "dlmscale.corruption",
              "dlmscale.objectives", "dlmscale.models", "dlmscale.data", "dlmscale.parallel",
              "dlmscale.train", "dlmscale.checkpoint", "dlmscale.checksums", "dlmscale.optim",
              "dlmscale.flops", "dlmscale.preemption", "dlmscale.provenance", "dlmscale.run_files",
              "dlmscale.storage",
              "dlmscale.metrics", "dlmscale.progress", "dlmscale.profiling",
              "dlmscale.compilation_cache", "dlmscale.host_memory", "dlmscale.export",
              "dlmscale.hf_import")),
    ("components", ("dlmscale.evaluation", "dlmscale.sampling")),
    ("schema", ("dlmscale.config",)),
    ("assembly", ("dlmscale.config_files", "dlmscale.json_config", "dlmscale.experiment")),
    ("tools", ("dlmscale.runner", "dlmscale.compile", "dlmscale.planner", "dlmscale.sweep",
               "dlmscale.launchers", "dlmscale.analysis")),
    ("entry", ("dlmscale.modes", "dlmscale.lm_eval_adapter")),
    ("cli", ("dlmscale.main",)),
]


def _module_name(path: str) -> str:
  rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
  return rel[:-len(".__init__")] if rel.endswith(".__init__") else rel


def _modules() -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(PACKAGE):
    for f in files:
      if f.endswith(".py"):
        out[_module_name(os.path.join(root, f))] = os.path.join(root, f)
  return out


def _imports(path: str, modules) -> set[str]:
  """dlmscale modules imported anywhere in the file (module level and function bodies)."""
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      # `from pkg import submodule` needs the submodule; `from pkg import name`, pkg itself.
      subs = [f"{node.module}.{a.name}" for a in node.names]
      names = [n for n in subs if n in modules]
      if len(names) < len(subs):
        names.append(node.module)
    else:
      continue
    out |= {n for n in names if n in modules and n.startswith("dlmscale.")}
  return out


def _graph():
  modules = _modules()
  # The package __init__ is the public API facade, run before any submodule: not a layer member.
  return {m: _imports(p, modules) - {m} for m, p in modules.items() if m != "dlmscale"}


def _layer(module: str) -> int:
  for i, (_, prefixes) in enumerate(LAYERS):
    if any(module == p or module.startswith(p + ".") for p in prefixes):
      return i
  raise AssertionError(f"{module} is in no layer: add it to LAYERS")


def test_every_module_has_a_layer_and_imports_nothing_above_it():
  upward = []
  for module, imported in _graph().items():
    for dep in imported:
      if _layer(dep) > _layer(module):
        upward.append(f"{module} -> {dep}")
  assert upward == []


def test_no_import_cycles_between_modules():
  graph = _graph()
  state, cycles = {}, []

  def visit(node, stack):
    state[node] = "open"
    for dep in sorted(graph.get(node, ())):
      if state.get(dep) == "open":
        cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
      elif dep not in state:
        visit(dep, stack + [dep])
    state[node] = "done"

  for node in sorted(graph):
    if node not in state:
      visit(node, [node])
  assert cycles == []


def test_the_checks_see_a_cycle_and_an_upward_import(monkeypatch):
  """The graph checks can fail: a config -> experiment edge is both."""
  graph = _graph()
  graph["dlmscale.config"] = graph["dlmscale.config"] | {"dlmscale.experiment"}
  monkeypatch.setattr(__import__(__name__), "_graph", lambda: graph)
  with pytest.raises(AssertionError):
    test_every_module_has_a_layer_and_imports_nothing_above_it()
  with pytest.raises(AssertionError):
    test_no_import_cycles_between_modules()


def test_main_only_parses_flags_and_calls_modes():
  """The CLI's modes are served by dlmscale.modes alone: main imports no layer below it but the
  config-file helpers, the SIGTERM exception and the start-up re-exec (host_memory), and nothing
  else defines a mode handler (*_command / *_all of a cfg)."""
  graph = _graph()
  assert graph["dlmscale.main"] <= {"dlmscale.modes", "dlmscale.config_files", "dlmscale.errors",
                                     "dlmscale.preemption", "dlmscale.host_memory"}
  commands = []
  for module, path in _modules().items():
    tree = ast.parse(open(path).read())
    # A mode's handler takes the run's config first (cfg, workdir): only modes.py has those.
    commands += [f"{module}.{n.name}" for n in tree.body
                 if isinstance(n, ast.FunctionDef) and n.args.args[:1]
                 and n.args.args[0].arg == "cfg" and n.name.endswith(("_command", "_all"))]
  assert commands == []


@pytest.mark.parametrize("pattern", ["jnp.where(masked", "jnp.where(masked_BxL"])
def test_masking_is_written_once(pattern):
  """Masked positions become the mask id in dlmscale.corruption only."""
  hits = [m for m, p in _modules().items() if pattern in open(p).read()]
  assert set(hits) <= {"dlmscale.corruption"}
