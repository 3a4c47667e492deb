"""Local or cloud files (gs://, s3://, ... through etils.epath) as documents.

`files:<path, dir or glob>[,<more>...]?format=auto&text_field=text&split=none&recursive=true`

- format: `text` (a file is one document, or several with `split`), `jsonl` (one per line, text
  in `text_field`), `parquet` (one per row of column `text_field`, streamed by record batch),
  `python` (every *.py file is one document), or `auto`: by extension, `.jsonl`/`.ndjson` ->
  jsonl, `.parquet`/`.pq` -> parquet, anything else -> text.
- `.gz` and `.dz` (dictzip) files are decompressed on the fly; the extension before them picks
  the format, and byte offsets in errors count decompressed bytes.
- split (text files only): `none`, `line`, `blankline` (paragraphs) or `re:<regex>`, a separator
  regex over the raw UTF-8 bytes (URL-quote `&` as %26 and `%` as %25).
- recursive: whether a directory target includes its subdirectories.

Globs use `*` and `[...]` within one path component and `**` for any number of directories (a
`?` would start the spec's options); hidden entries (`.git`, ...) are skipped when walking.
Order: targets as given, each one's files sorted by relative path. Names are the path relative
to the target's fixed (wildcard-free) root, plus `#<line>` (1-based) for jsonl lines and split
pieces, `#<row>` (0-based) for parquet rows, so they are the same on every machine. Empty or
whitespace-only documents are skipped and counted.
"""
import contextlib
import fnmatch
import gzip
import json
import posixpath
import re
from typing import Iterator

from etils import epath

from dlmscale.data.errors import DataError
from dlmscale.data.sources.base import Document, SourceContext, decode_utf8, register
from dlmscale.data.spec import Spec, take_options
from dlmscale.optional import require

FORMATS = ("auto", "text", "jsonl", "parquet", "python")
_DEFAULTS = {"format": "auto", "text_field": "text", "split": "none", "recursive": True}
_COMPRESSED = (".gz", ".dz")
_BY_EXTENSION = {".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet", ".pq": "parquet"}
_SPLITS = {"line": rb"\r?\n", "blankline": rb"\r?\n(?:[ \t]*\r?\n)+"}
_WILDCARD = re.compile(r"[*?\[]")
_BATCH_ROWS = 1024


@register("files")
def files_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """Documents of every matched file, targets in order, files sorted within each target."""
  opts = take_options(spec, _DEFAULTS, "source")
  fmt = opts["format"]
  if fmt not in FORMATS:
    raise DataError(f"source {spec}: format={fmt!r} is not one of {list(FORMATS)}")
  separator = _separator(spec, opts["split"])
  if separator is not None and fmt in ("jsonl", "parquet", "python"):
    raise DataError(f"source {spec}: split applies to text files only; drop it or use "
                    f"format=text")
  targets = [t.strip() for t in spec.target.split(",") if t.strip()]
  if not targets:
    raise DataError(f"source {spec}: give a path, directory or glob, e.g. files:/data/*.jsonl")
  seen_paths, seen_names = set(), {}
  for target in targets:
    for rel, path in list_files(target, opts["recursive"], python_only=fmt == "python"):
      if str(path) in seen_paths:
        continue  # Matched by an earlier target: read each file once.
      if rel in seen_names:
        raise DataError(f"source {spec}: {path} and {seen_names[rel]} get the same document name "
                        f"{rel!r}; use targets whose relative paths differ, or separate sources")
      seen_paths.add(str(path))
      seen_names[rel] = path
      yield from _read_file(rel, path, _file_format(fmt, path), opts["text_field"], separator,
                            ctx)


def list_files(target: str, recursive: bool = True,
               python_only: bool = False) -> list[tuple[str, epath.Path]]:
  """Sorted (name relative to the fixed root, path) of the files a target matches."""
  root, pattern = _split_glob(target)
  root_path = epath.Path(root).expanduser()
  if pattern is None:
    if not root_path.exists():
      raise DataError(f"files source: {target!r} does not exist; check the path")
    if not root_path.is_dir():
      return [(root_path.name, root_path)]
    parts, deep = ["**", "*"] if recursive else ["*"], recursive
  else:
    parts, deep = pattern.split("/"), "**" in pattern.split("/")
  found = []
  for rel in _walk(root_path, max_depth=None if deep else len(parts) - 1):
    if _match(parts, rel.split("/")) and (not python_only or rel.endswith(".py")):
      found.append((rel, root_path / rel))
  if not found:
    raise DataError(f"files source: {target!r} matched no files"
                    f"{' ending in .py' if python_only else ''}; check the path and pattern")
  return sorted(found)


def _split_glob(target: str) -> tuple[str, str | None]:
  """(fixed root, pattern relative to it or None): the root is the wildcard-free prefix."""
  scheme, sep, rest = target.partition("://")
  if not sep:
    scheme, rest = "", target
  parts = rest.split("/")
  first = next((i for i, p in enumerate(parts) if _WILDCARD.search(p)), None)
  if first is None:
    return target, None
  root = "/".join(parts[:first]) or ("/" if rest.startswith("/") else ".")
  return (f"{scheme}://{root}" if sep else root), "/".join(parts[first:])


def _walk(root: epath.Path, max_depth: int | None) -> Iterator[str]:
  """Relative posix paths of the non-hidden files under root, down to max_depth directories."""
  # Walk roots come back without a scheme on fsspec backends (gs://b/x -> b/x), so relative
  # paths are computed on scheme-free strings and joined back onto root.
  base = _strip_scheme(str(root))
  for dirpath, dirnames, filenames in root.walk():
    rel_dir = posixpath.relpath(_strip_scheme(str(dirpath)), base)
    depth = 0 if rel_dir == "." else rel_dir.count("/") + 1
    keep = [] if max_depth is not None and depth >= max_depth else dirnames
    dirnames[:] = [d for d in keep if not d.startswith(".")]
    for f in filenames:
      if not f.startswith("."):
        yield f if rel_dir == "." else f"{rel_dir}/{f}"


def _strip_scheme(path: str) -> str:
  return path.partition("://")[2] if "://" in path else path


def _match(pattern: list[str], parts: list[str]) -> bool:
  """Glob match by path component; `**` matches zero or more directories."""
  if not pattern:
    return not parts
  if pattern[0] == "**":
    return any(_match(pattern[1:], parts[i:]) for i in range(len(parts) + 1))
  return bool(parts) and fnmatch.fnmatchcase(parts[0], pattern[0]) and _match(pattern[1:],
                                                                               parts[1:])


def _separator(spec: Spec, split: str) -> re.Pattern | None:
  if split == "none":
    return None
  if split in _SPLITS:
    return re.compile(_SPLITS[split])
  if split.startswith("re:") and split[3:]:
    try:
      return re.compile(split[3:].encode("utf-8"))
    except re.error as e:
      raise DataError(f"source {spec}: split regex {split[3:]!r} is invalid ({e})") from None
  raise DataError(f"source {spec}: split={split!r} must be none, line, blankline or re:<regex>")


def _file_format(fmt: str, path: epath.Path) -> str:
  if fmt == "python":
    return "text"
  if fmt != "auto":
    return fmt
  name = path.name.lower()
  for ext in _COMPRESSED:
    name = name.removesuffix(ext)
  return _BY_EXTENSION.get(posixpath.splitext(name)[1], "text")


@contextlib.contextmanager
def _open(path: epath.Path):
  """Binary file object, gunzipped for .gz/.dz (GzipFile leaves the raw file to us to close)."""
  with path.open("rb") as raw:
    if path.name.lower().endswith(_COMPRESSED):
      with gzip.GzipFile(fileobj=raw, mode="rb") as fh:
        yield fh
    else:
      yield raw


def _read_file(rel: str, path: epath.Path, fmt: str, field: str, separator: re.Pattern | None,
               ctx: SourceContext) -> Iterator[Document]:
  if fmt == "parquet":
    yield from _keep(_parquet(rel, path, field, ctx), ctx)
    return
  with _open(path) as fh:
    if fmt == "jsonl":
      yield from _keep(_jsonl(rel, path, fh, field, ctx), ctx)
    elif separator is None:
      yield from _keep([(rel, decode_utf8(_read_all(fh, path), str(path), ctx))], ctx)
    else:
      yield from _keep(_pieces(rel, path, _read_all(fh, path), separator, ctx), ctx)


def _read_all(fh, path: epath.Path) -> bytes:
  try:
    return fh.read()
  except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError.
    raise DataError(f"{path}: cannot read ({e}); check the file is complete and, for .gz/.dz, "
                    f"really gzip-compressed") from None


def _keep(docs, ctx: SourceContext) -> Iterator[Document]:
  """Drops skipped (None) and empty documents, counting the empty ones."""
  for name, text in docs:
    if text is None:
      continue
    if not text.strip():
      ctx.stats["empty_skipped"] += 1
      continue
    yield name, text


def _pieces(rel, path, data: bytes, separator: re.Pattern, ctx) -> Iterator[tuple]:
  start, line = 0, 1
  bounds = [(m.start(), m.end()) for m in separator.finditer(data) if m.end() > m.start()]
  for end, next_start in bounds + [(len(data), len(data))]:
    piece = data[start:end]
    if piece.strip():
      yield f"{rel}#{line}", decode_utf8(piece, f"{path} line {line}", ctx)
    line += data.count(b"\n", start, next_start)
    start = next_start


def _jsonl(rel, path, fh, field: str, ctx) -> Iterator[tuple]:
  try:
    for lineno, raw in enumerate(fh, 1):
      if not raw.strip():
        continue
      where = f"{path} line {lineno}"
      line = decode_utf8(raw, where, ctx)
      if line is None:
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise DataError(f"{where}: not valid JSON ({e.msg} at column {e.colno}); each line must "
                        f"be one JSON object") from None
      if not isinstance(record, dict) or field not in record:
        keys = sorted(record) if isinstance(record, dict) else type(record).__name__
        raise DataError(f"{where}: no field {field!r} (has {keys}); set text_field= to the "
                        f"field holding the text")
      yield f"{rel}#{lineno}", _as_text(record[field], where, ctx)
  except (OSError, EOFError) as e:
    raise DataError(f"{path}: cannot read ({e}); check the file is complete") from None


def _parquet(rel, path, field: str, ctx) -> Iterator[tuple]:
  pq = require("pyarrow.parquet", "parquet", f"reading the parquet file {rel}")
  if path.name.lower().endswith(_COMPRESSED):
    raise DataError(f"{path}: gzip-compressed parquet is not readable in a stream; decompress "
                    f"it (parquet compresses internally)")
  with path.open("rb") as fh:
    try:
      pf = pq.ParquetFile(fh)
    except Exception as e:  # pyarrow raises its own ArrowInvalid, an Exception subclass.
      raise DataError(f"{path}: not a readable parquet file ({e}); check format=") from None
    if field not in pf.schema_arrow.names:
      raise DataError(f"{path}: no column {field!r} (has {pf.schema_arrow.names}); set "
                      f"text_field= to the text column")
    row = 0
    # iter_batches reads one row group at a time, so memory does not grow with the file.
    for batch in pf.iter_batches(batch_size=_BATCH_ROWS, columns=[field]):
      for value in batch.column(0).to_pylist():
        yield f"{rel}#{row}", _as_text(value, f"{path} row {row}", ctx)
        row += 1


def _as_text(value, where: str, ctx) -> str | None:
  if value is None or isinstance(value, str):
    return value or ""
  if isinstance(value, bytes):
    return decode_utf8(value, where, ctx)
  raise DataError(f"{where}: text field holds {type(value).__name__}, not a string; point "
                  f"text_field= at a string field")
