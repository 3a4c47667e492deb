"""A small reader for R's serialization format (XDR), enough for data shipped in R packages.

Reads `.rds` files (one object), `.rda`/`.RData` files (`save()`: named objects) and lazy-load
databases (`data/Rdata.rdb` + `.rdx`, how installed packages store their data sets), each
gzip/bzip2/xz compressed or not. Decodes vectors (logical, integer, double, complex, character,
raw, list), attributes, pairlists, symbols, environments and the common ALTREP forms; closures
and byte code are read structurally but not interpreted.

Values come back as `RObject(type, value, attributes)`; `to_python` turns character vectors,
factors, named lists and data frames into plain Python.
"""
import bz2
import dataclasses
import gzip
import lzma
import struct
import zlib
from typing import Any

from dlmscale.data.errors import DataError

NA_INTEGER = -(2**31)

# SEXP types (R's Rinternals.h) and the serialization-only pseudo types (serialize.c).
_NIL, _SYM, _LIST, _CLO, _ENV, _PROM, _LANG = 0, 1, 2, 3, 4, 5, 6
_SPECIAL, _BUILTIN, _CHAR, _LGL, _INT, _REAL, _CPLX, _STR = 7, 8, 9, 10, 13, 14, 15, 16
_DOT, _VEC, _EXPR, _BCODE, _EXTPTR, _WEAKREF, _RAW, _S4 = 17, 19, 20, 21, 22, 23, 24, 25
_REF, _NILVALUE, _GLOBALENV, _UNBOUND, _MISSING, _BASENS = 255, 254, 253, 252, 251, 250
_NAMESPACE, _PACKAGE, _PERSIST, _EMPTYENV, _BASEENV, _ALTREP = 249, 248, 247, 242, 241, 238
_SPECIAL_ENVS = {_GLOBALENV: "globalenv", _UNBOUND: "unbound", _MISSING: "missingarg",
                 _BASENS: "basenamespace", _EMPTYENV: "emptyenv", _BASEENV: "baseenv"}
_PAIR_TYPES = {_LIST: "pairlist", _LANG: "language", _CLO: "closure", _PROM: "promise",
               _DOT: "dots"}
_VECTOR_NAMES = {_LGL: "logical", _INT: "integer", _REAL: "double", _CPLX: "complex",
                 _STR: "character", _VEC: "list", _EXPR: "expression", _RAW: "raw"}
# CHARSXP encoding bits (the "levels" part of the flags).
_BYTES, _LATIN1, _UTF8, _ASCII = 1 << 1, 1 << 2, 1 << 3, 1 << 6


@dataclasses.dataclass
class RObject:
  """One R value: `type` is R's typeof() name; `value` a list, str, bytes or nested RObjects.

  NA is None in every vector type (NaN stays NaN)."""

  type: str
  value: Any = None
  attributes: dict = dataclasses.field(default_factory=dict)

  def attr(self, name: str, default=None):
    a = self.attributes.get(name)
    return default if a is None else a.value


class _Reader:
  """Walks one XDR serialization stream; `where` names the file in errors."""

  def __init__(self, data: bytes, where: str):
    self.buf, self.pos, self.where = memoryview(data), 0, where
    self.refs: list[RObject] = []
    self.native_encoding = "utf-8"

  def fail(self, what: str):
    raise DataError(f"{self.where}: {what} at byte {self.pos} of the R stream; the file is not "
                    f"R serialization (XDR) this reader understands")

  def take(self, n: int) -> memoryview:
    if n < 0 or self.pos + n > len(self.buf):
      self.fail(f"truncated data (wanted {n} bytes)")
    out = self.buf[self.pos:self.pos + n]
    self.pos += n
    return out

  def int(self) -> int:
    return struct.unpack(">i", self.take(4))[0]

  def length(self) -> int:
    n = self.int()
    if n == -1:  # long vector: two more ints, upper and lower halves
      hi, lo = struct.unpack(">II", self.take(8))
      n = (hi << 32) | lo
    if n < 0:
      self.fail(f"negative length {n}")
    return n

  def header(self) -> None:
    fmt = bytes(self.take(2))
    if fmt != b"X\n":
      kind = {b"A\n": "ASCII", b"B\n": "native binary"}.get(fmt)
      self.fail(f"{kind} serialization (only XDR is supported)" if kind else
                f"unknown format {fmt!r}")
    version = self.int()
    self.take(8)  # writer's R version, minimal reader version
    if version == 3:
      self.native_encoding = _python_encoding(bytes(self.take(self.int())).decode("ascii"))
    elif version != 2:
      self.fail(f"serialization version {version}")

  def item(self) -> RObject | None:
    flags = self.int()
    t, has_attr = flags & 0xFF, bool(flags & (1 << 9))
    if t == _NILVALUE:
      return None
    if t in _SPECIAL_ENVS:
      return RObject("environment" if t != _UNBOUND and t != _MISSING else "symbol",
                     _SPECIAL_ENVS[t])
    if t == _REF:
      index = flags >> 8 or self.int()
      if not 0 < index <= len(self.refs):
        self.fail(f"reference {index} to an object not read yet")
      return self.refs[index - 1]
    if t in (_PERSIST, _NAMESPACE, _PACKAGE):
      if self.int() != 0:
        self.fail("persistent reference with a non-zero tag")
      obj = RObject({_PERSIST: "persistent", _NAMESPACE: "namespace", _PACKAGE: "package"}[t],
                    [self.charsxp(self.int()) for _ in range(self.int())])
      self.refs.append(obj)
      return obj
    if t == _SYM:
      obj = RObject("symbol", self.item().value)
      self.refs.append(obj)
      return obj
    if t == _ENV:
      obj = RObject("environment", {})
      self.refs.append(obj)
      locked = self.int()
      enclos, frame, hashtab = self.item(), self.item(), self.item()
      obj.value = {"locked": bool(locked), "enclos": enclos, "frame": frame, "hashtab": hashtab}
      obj.attributes = _attr_dict(self.item())
      return obj
    if t in _PAIR_TYPES:
      return self.pairlist(flags)
    if t == _CHAR:
      return RObject("char", self.charsxp(flags))
    if t == _ALTREP:
      return self.altrep()
    if t in (_SPECIAL, _BUILTIN):
      obj = RObject("builtin", bytes(self.take(self.int())).decode("ascii"))
    elif t in _VECTOR_NAMES:
      obj = RObject(_VECTOR_NAMES[t], self.vector(t))
    elif t == _S4:
      obj = RObject("S4")
    elif t == _BCODE:
      self.fail("R byte code (compiled closures) is not supported")
    else:
      self.fail(f"unsupported SEXP type {t}")
    if has_attr:
      obj.attributes = _attr_dict(self.item())
    return obj

  def vector(self, t: int) -> list | bytes:
    n = self.length()
    if t == _STR:
      return [self.charsxp(self.int()) for _ in range(n)]
    if t in (_VEC, _EXPR):
      return [self.item() for _ in range(n)]
    if t == _RAW:
      return bytes(self.take(n))
    if t in (_INT, _LGL):
      ints = struct.unpack(f">{n}i", self.take(4 * n))
      if t == _LGL:
        return [None if v == NA_INTEGER else bool(v) for v in ints]
      return [None if v == NA_INTEGER else v for v in ints]
    count = 2 * n if t == _CPLX else n
    doubles = struct.unpack(f">{count}d", self.take(8 * count))
    if t == _CPLX:
      return [complex(doubles[i], doubles[i + 1]) for i in range(0, len(doubles), 2)]
    out = list(doubles)
    for i, v in enumerate(out):
      if v != v and struct.pack(">d", v)[4:] == b"\x00\x00\x07\xa2":  # NA_real_, not NaN
        out[i] = None
    return out

  def charsxp(self, flags: int) -> str | None:
    """One CHARSXP's string (None for NA), decoded by its encoding bits."""
    if flags & 0xFF != _CHAR:
      self.fail(f"expected a string (CHARSXP), got SEXP type {flags & 0xFF}")
    n = self.int()
    if n == -1:
      return None
    raw = bytes(self.take(n))
    levels = flags >> 12
    encoding = ("utf-8" if levels & _UTF8 else "latin-1" if levels & _LATIN1 else
                "ascii" if levels & _ASCII else self.native_encoding)
    if levels & _BYTES:
      encoding = "latin-1"  # uninterpreted bytes: keep every byte, one char each
    try:
      return raw.decode(encoding)
    except UnicodeDecodeError as e:
      self.fail(f"string not valid {encoding} at its byte {e.start}")

  def pairlist(self, flags: int) -> RObject:
    """A pairlist/language/closure chain, read iteratively: CDR chains can be very long."""
    head = RObject(_PAIR_TYPES[flags & 0xFF], [])
    while True:
      attrs = _attr_dict(self.item()) if flags & (1 << 9) else {}
      tag = self.item() if flags & (1 << 10) else None
      head.value.append((tag.value if tag is not None else None, self.item()))
      if attrs and len(head.value) == 1:
        head.attributes = attrs
      flags = self.int()
      if flags & 0xFF not in _PAIR_TYPES:
        self.pos -= 4
        cdr = self.item()
        if cdr is not None:  # a dotted pair: keep the tail as an untagged last element
          head.value.append((None, cdr))
        return head

  def altrep(self) -> RObject:
    info, state, attrs = self.item(), self.item(), self.item()
    cls = info.value[0][1].value if info and info.value else "?"
    if cls == "compact_intseq":
      n, start, step = (int(v) for v in state.value)
      obj = RObject("integer", list(range(start, start + n * step, step)))
    elif cls == "compact_realseq":
      n, start, step = state.value
      obj = RObject("double", [start + i * step for i in range(int(n))])
    elif cls.startswith("wrap_"):  # state: (wrapped vector, metadata)
      obj = dataclasses.replace(_first(state))
    elif cls == "deferred_string":  # state: (numeric source vector, scipen info)
      src = _first(state)
      obj = RObject("character", [None if v is None else _num_str(v) for v in src.value])
    else:
      self.fail(f"unsupported ALTREP class {cls!r}")
    obj.attributes = _attr_dict(attrs) or obj.attributes
    return obj


def _first(obj: RObject):
  """The first element of a list or pairlist (ALTREP states come as either)."""
  return obj.value[0][1] if obj.type == "pairlist" else obj.value[0]


def _num_str(v) -> str:
  return str(int(v)) if isinstance(v, float) and v.is_integer() else str(v)


def _python_encoding(r_name: str) -> str:
  name = r_name.lower()
  return "latin-1" if name in ("latin1", "iso-8859-1", "iso8859-1") else (
      "utf-8" if name in ("utf-8", "utf8", "") else name)


def _attr_dict(pairs: RObject | None) -> dict:
  if pairs is None:
    return {}
  return {tag: value for tag, value in pairs.value}


def _decompress(data: bytes, where: str) -> bytes:
  try:
    if data[:2] == b"\x1f\x8b":
      return gzip.decompress(data)
    if data[:3] == b"BZh":
      return bz2.decompress(data)
    if data[:6] == b"\xfd7zXZ\x00":
      return lzma.decompress(data)
  except (OSError, EOFError, lzma.LZMAError) as e:
    raise DataError(f"{where}: corrupt compressed R data ({e}); reinstall the package") from None
  return data


def unserialize(data: bytes, where: str = "<bytes>") -> RObject | None:
  """One object from an uncompressed serialization stream (what R's serialize() writes)."""
  reader = _Reader(data, where)
  reader.header()
  return reader.item()


def read_rds(path: str) -> RObject | None:
  """The object in an .rds file (readRDS)."""
  with open(path, "rb") as fh:
    return unserialize(_decompress(fh.read(), path), path)


def read_rda(path: str) -> dict[str, RObject]:
  """The named objects in an .rda/.RData file (load())."""
  with open(path, "rb") as fh:
    data = _decompress(fh.read(), path)
  if data[:5] not in (b"RDX2\n", b"RDX3\n"):
    raise DataError(f"{path}: not an XDR .rda file (magic {data[:5]!r}); re-save it with "
                    f"save(..., ascii=FALSE)")
  return dict(unserialize(data[5:], path).value)


_RAW_LZMA2 = [{"id": lzma.FILTER_LZMA2, "preset": 9 | lzma.PRESET_EXTREME}]


def _lazyload_blob(blob: bytes, compression: int, where: str) -> bytes:
  """One .rdb record: 4-byte big-endian length, then the data. Compression 1 is a bare zlib
  stream; 2 and 3 prefix a type byte: '0' stored, '1' zlib, '2' bzip2, 'Z' raw LZMA2."""
  size = struct.unpack(">I", blob[:4])[0]
  kind, body = (b"1", blob[4:]) if compression == 1 else (blob[4:5], blob[5:])
  try:
    if kind == b"Z":
      out = lzma.decompress(body, format=lzma.FORMAT_RAW, filters=_RAW_LZMA2)
    else:
      out = {b"0": bytes, b"1": zlib.decompress, b"2": bz2.decompress}[kind](body)
  except (KeyError, zlib.error, OSError, lzma.LZMAError) as e:
    raise DataError(f"{where}: unreadable lazy-load record ({e!r}); reinstall the package") \
        from None
  if len(out) != size:
    raise DataError(f"{where}: lazy-load record is {len(out)} bytes, header says {size}")
  return out


def read_lazyload_db(base: str) -> dict[str, RObject]:
  """Every object of a lazy-load database `<base>.rdb` + `<base>.rdx` (e.g. data/Rdata)."""
  index = to_python(read_rds(base + ".rdx"))
  compressed = index.get("compressed", [True])[0]
  compression = 0 if compressed is False else 1 if compressed is True else int(compressed)
  out = {}
  with open(base + ".rdb", "rb") as fh:
    for name, (offset, length) in index["variables"].items():
      fh.seek(offset)
      where = f"{base}.rdb[{name}]"
      blob = fh.read(length)
      data = blob[4:] if compression == 0 else _lazyload_blob(blob, compression, where)
      out[name] = unserialize(data, where)
  return out


def to_python(obj: RObject | None):
  """Plain Python: vectors -> lists, factors -> level strings, named lists and data frames ->
  dicts (column -> list); anything else is returned as is."""
  if obj is None:
    return None
  if not isinstance(obj, RObject):
    return obj
  classes = obj.attr("class") or []
  if obj.type == "integer" and "factor" in classes:
    levels = obj.attr("levels")
    return [None if v is None else levels[v - 1] for v in obj.value]
  if obj.type in ("list", "pairlist"):
    items = [v for _, v in obj.value] if obj.type == "pairlist" else obj.value
    names = ([t for t, _ in obj.value] if obj.type == "pairlist" else obj.attr("names"))
    values = [to_python(v) for v in items]
    if names and all(names) and len(set(names)) == len(names):
      return dict(zip(names, values))
    return values
  if obj.type in ("char", "symbol"):
    return obj.value
  return obj.value
