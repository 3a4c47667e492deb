"""README's two commands, extracted so CI runs exactly what README shows (no copy to drift).

  python3 .ci/readme_commands.py main         # prints README's first command (install + quickstart)
  python3 .ci/readme_commands.py test         # prints README's second command (install + tests)
  python3 .ci/readme_commands.py table LOG    # exit 0 iff LOG holds the quickstart's AR/DLM table

Exits non-zero with a one-line error when README's first code block no longer has that shape.
"""
from __future__ import annotations

import os
import re
import sys

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")
_VALUE = r"\d+\.\d+±\d+\.\d+"


class ShapeError(Exception):
  """README's first block or the quickstart's output is not what CI expects."""


def commands(readme_text: str) -> dict[str, str]:
  """{'main': ..., 'test': ...}: the two command lines of README's first ```bash block."""
  block = re.search(r"```bash\n(.*?)```", readme_text, re.S)
  if not block:
    raise ShapeError("README has no ```bash block: its first block must hold the two commands")
  lines = [ln.strip() for ln in block.group(1).splitlines()
           if ln.strip() and not ln.strip().startswith("#")]
  if len(lines) != 2:
    raise ShapeError(f"README's first ```bash block holds {len(lines)} commands, expected 2 "
                     "(install + run the main job; install + run the tests)")
  main, test = lines
  if not (main.startswith("pip install -e . &&") and "python -m dlmscale.main" in main):
    raise ShapeError(f"README's first command is not a base install and the main job: {main!r}")
  if not (test.startswith('pip install -e ".[test]"') and "pytest" in test):
    raise ShapeError(f"README's second command is not the test install and pytest: {test!r}")
  return {"main": main, "test": test}


def has_comparison_table(output: str) -> bool:
  """True when `output` holds the quickstart's side-by-side table with an AR NLL and a DLM ELBO."""
  if not re.search(r"^objective\s+tokens seen\s+epochs\s+AR val NLL\s+DLM val ELBO", output, re.M):
    return False
  ar = re.search(rf"^ar\s+[\d,]+\s+[\d.]+\s+{_VALUE}\s+-\s", output, re.M)
  dlm = re.search(rf"^mdm\s+[\d,]+\s+[\d.]+\s+-\s+{_VALUE}\s", output, re.M)
  return bool(ar and dlm)


def main(argv: list[str]) -> int:
  try:
    if len(argv) == 1 and argv[0] in ("main", "test"):
      with open(README) as f:
        print(commands(f.read())[argv[0]])
      return 0
    if len(argv) == 2 and argv[0] == "table":
      with open(argv[1]) as f:
        if has_comparison_table(f.read()):
          return 0
      raise ShapeError(f"{argv[1]} holds no AR/DLM comparison table: the quickstart did not finish")
  except ShapeError as e:
    print(f"error: {e}", file=sys.stderr)
    return 1
  print(__doc__.strip(), file=sys.stderr)
  return 2


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
