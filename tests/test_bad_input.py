"""README's "Bad input" table, row by row: every example runs through the CLI and must exit 2 with
no traceback, a last stderr line `error: <message>` and nothing written; a row that needs a run
first (no example) must name an existing test whose file holds the message.

Each example runs verbatim in a fresh directory that links to the repository's top-level entries,
so `runs/bad` is new there and anything a refused command wrote would show up beside the links.
"""
from __future__ import annotations

import ast
import concurrent.futures
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from _shared import cli_env

REPO = Path(__file__).resolve().parents[1]
ELLIPSIS = "…"
TIMEOUT_S = 300


def _cells(line: str) -> list[str]:
  """A markdown table row's cells ('\\|' is a literal bar)."""
  parts = re.split(r"(?<!\\)\|", line.strip().strip("|"))
  return [p.strip().replace("\\|", "|") for p in parts]


def _code(cell: str) -> str:
  """The text of a cell that is one `code span` (or the cell as it is)."""
  match = re.fullmatch(r"`(.*)`", cell)
  return match.group(1) if match else cell


def table_rows() -> list[dict]:
  text = (REPO / "README.md").read_text()
  section = text.split("\n## Bad input\n", 1)[1].split("\n## ", 1)[0]
  lines = [line for line in section.splitlines() if line.startswith("|")]
  header = _cells(lines[0])
  assert header[:3] == ["Bad input", "Example", "Message starts with"], header
  rows = []
  for line in lines[2:]:  # after the header and its |---| line
    cells = _cells(line) + [""]
    rows.append({"what": cells[0], "example": _code(cells[1]), "message": _code(cells[2]),
                 "test": _code(cells[3])})
  return rows


ROWS = table_rows()
EXAMPLES = [r for r in ROWS if r["example"] != "—"]
SETUPS = [r for r in ROWS if r["example"] == "—"]


def test_the_table_is_large_and_each_row_is_one_case():
  assert len(ROWS) >= 35
  assert len({r["what"] for r in ROWS}) == len(ROWS)
  assert len({r["example"] for r in EXAMPLES}) == len(EXAMPLES)
  for r in EXAMPLES:
    assert ELLIPSIS not in r["message"] and not r["test"], r  # an example's message is exact
  for r in SETUPS:
    assert r["test"], r


def _linked_dir(root: Path) -> tuple[Path, set[str]]:
  """A new directory holding a link to each top-level entry of the repository."""
  root.mkdir()
  names = {p.name for p in REPO.iterdir() if p.name not in (".git", "runs")}
  for name in names:
    (root / name).symlink_to(REPO / name)
  return root, names


def _run(env, root: Path, example: str) -> dict:
  cwd, links = _linked_dir(root)
  proc = subprocess.run([sys.executable, "-m", "dlmscale.main", *shlex.split(example)], cwd=cwd,
                        env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
  written = sorted(set(os.listdir(cwd)) - links)
  return {"returncode": proc.returncode, "stderr": proc.stderr, "written": written}


@pytest.fixture(scope="module")
def results(tmp_path_factory):
  """Every example's result, four at a time (mostly interpreter and JAX start-up)."""
  env = cli_env(tmp_path_factory)
  env.pop("DLMSCALE_PROGRESS", None)
  root = tmp_path_factory.mktemp("bad_input")
  with concurrent.futures.ThreadPoolExecutor(4) as pool:
    futures = {r["example"]: pool.submit(_run, env, root / f"case{i}", r["example"])
               for i, r in enumerate(EXAMPLES)}
    return {example: f.result() for example, f in futures.items()}


@pytest.mark.parametrize("row", EXAMPLES, ids=[r["what"] for r in EXAMPLES])
def test_example_is_one_error_line_and_writes_nothing(results, row):
  result = results[row["example"]]
  stderr = result["stderr"]
  assert result["returncode"] == 2, (result["returncode"], stderr[-3000:])
  assert "Traceback" not in stderr and "Exception ignored" not in stderr, stderr[-3000:]
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert lines and lines[-1].startswith(f"error: {row['message']}"), (row["message"],
                                                                       stderr[-3000:])
  assert result["written"] == [], result["written"]


def _test_names(path: Path) -> set[str]:
  tree = ast.parse(path.read_text())
  return {node.name for node in tree.body
          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
          and node.name.startswith("test_")}


@pytest.mark.parametrize("row", SETUPS, ids=[r["what"] for r in SETUPS])
def test_setup_row_names_a_test_that_checks_its_message(row):
  file, _, name = row["test"].partition("::")
  path = REPO / file
  assert path.is_file(), row["test"]
  assert name in _test_names(path), f"{row['test']}: no such test"
  source = path.read_text()
  for part in filter(None, (p.strip() for p in row["message"].split(ELLIPSIS))):
    assert part in source, (part, row["test"])
