"""README stays true: its library example runs and learns, and .ci/run calls its test command."""
import os
import re

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme() -> str:
  with open(os.path.join(ROOT, "README.md")) as f:
    return f.read()


def test_library_example_trains():
  code = re.findall(r"```python\n(.*?)```", _readme(), re.S)[0]
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


def test_ci_runs_the_readme_test_command():
  test_cmd = re.findall(r"^(pip install -e \"\.\[test\]\".*)$", _readme(), re.M)[0]
  with open(os.path.join(ROOT, ".ci", "run")) as f:
    assert test_cmd in f.read()
