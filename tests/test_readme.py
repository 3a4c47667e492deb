"""README stays true: its library example runs and learns, and .ci/run runs its two commands."""
import importlib.util
import os
import re

import jax
import numpy as np
import pytest

from dlmscale.modes import format_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def test_library_example_trains():
  blocks = re.findall(r"```python\n(.*?)```", _readme(), re.S)
  code = next(b for b in blocks if "dlmscale.build_model" in b)  # "Using dlmscale from your own JAX code"
  scope: dict = {}
  exec(compile(code, "README.md", "exec"), scope)
  tokens = jax.random.randint(jax.random.key(1), (8, 32), 0, 256)
  params, opt_state = scope["params"], scope["opt_state"]
  losses = []
  for i in range(5):
    params, opt_state, loss = scope["step"](params, opt_state, tokens, jax.random.key(i))
    losses.append(float(loss))
  assert np.isfinite(losses).all()
  assert losses[-1] < losses[0]


def _readme_commands():
  spec = importlib.util.spec_from_file_location(
      "readme_commands", os.path.join(ROOT, ".ci", "readme_commands.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_readme_opens_with_the_two_commands_ci_extracts():
  cmds = _readme_commands().commands(_readme())
  assert cmds["main"] == ("pip install -e . && python -m dlmscale.main "
                          "--config=experiments/quickstart.py --workdir=runs/quickstart")
  assert cmds["test"].startswith('pip install -e ".[test]" && ')
  assert cmds["test"].endswith("python -m pytest tests -q")


def test_ci_runs_both_extracted_commands_and_checks_the_table():
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    ci = f.read()
  for needed in ("readme_commands.py main)", "readme_commands.py test)", '"$main_cmd"',
                 '"$test_cmd"', "readme_commands.py table", "-u XLA_FLAGS"):
    assert needed in ci, needed
  # The base install runs before the test extras exist: the quickstart venv is its own.
  assert ci.index('"$main_cmd"') < ci.index('"$test_cmd"')


@pytest.mark.parametrize("block, problem", [
    ("```bash\npip install -e . && python -m dlmscale.main --config=x\n```", "holds 1 commands"),
    ("```bash\npip install -e . && python -m dlmscale.main --config=x\nmake\nmake test\n```",
     "holds 3 commands"),
    ("```bash\npip install dlmscale && python -m dlmscale.main\n"
     "pip install -e \".[test]\" && pytest\n```", "not a base install"),
    ("```bash\npip install -e . && python -m dlmscale.main\npip install -e . && pytest\n```",
     "not the test install"),
    ("no code here", "no ```bash block"),
])
def test_extraction_fails_when_the_first_block_changes_shape(block, problem):
  rc = _readme_commands()
  with pytest.raises(rc.ShapeError, match=re.escape(problem)):
    rc.commands(block)


def test_table_check_accepts_the_real_table_and_rejects_a_partial_one():
  rc = _readme_commands()
  results = [{"objective": "ar", "tokens_seen": 2998272, "epochs": 5.0, "val_kind": "nll",
              "val_mean": 1.5362, "val_stderr": 0.0249, "wall_s": 170.0},
             {"objective": "mdm", "tokens_seen": 2998272, "epochs": 5.0, "val_kind": "elbo",
              "val_mean": 2.4941, "val_stderr": 0.0296, "wall_s": 160.0}]
  table = format_table(results)
  assert rc.has_comparison_table("log lines\n" + table + "\n")
  assert not rc.has_comparison_table(format_table(results[:1]))  # the DLM run never finished
  assert not rc.has_comparison_table("[ar] step 50/732 loss 3.87")
