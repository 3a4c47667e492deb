"""The source registry: a source turns a Spec into a deterministic iterator of (name, text).

Names must be stable across machines (relative paths, dataset keys), because they decide the
train/validation split. Undecodable bytes are an error naming file and byte offset, or are
skipped and counted when the config says on_decode_error='skip'.
"""
import collections
import dataclasses
from typing import Callable, Iterator

from dlmscale.data.errors import DataError
from dlmscale.data.spec import Spec, parse_spec

Document = tuple[str, str]
DECODE_POLICIES = ("error", "skip")


@dataclasses.dataclass
class SourceContext:
  """What every source needs besides its spec: the decode policy and counters for meta.json."""

  on_decode_error: str = "error"
  stats: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def __post_init__(self):
    if self.on_decode_error not in DECODE_POLICIES:
      raise DataError(f"on_decode_error must be one of {list(DECODE_POLICIES)}, got "
                      f"{self.on_decode_error!r}")


SourceFn = Callable[[Spec, SourceContext], Iterator[Document]]
_SOURCES: dict[str, SourceFn] = {}


def register(kind: str):
  """Decorator registering `fn(spec, ctx) -> Iterator[(name, text)]` under `kind`."""
  def wrap(fn: SourceFn) -> SourceFn:
    _SOURCES[kind] = fn
    return fn
  return wrap


def kinds() -> list[str]:
  return sorted(_SOURCES)


def decode_utf8(raw: bytes, where: str, ctx: SourceContext) -> str | None:
  """UTF-8 text, or None when skipping; the error names where and the byte offset."""
  try:
    return raw.decode("utf-8")
  except UnicodeDecodeError as e:
    if ctx.on_decode_error == "skip":
      ctx.stats["undecodable_skipped"] += 1
      return None
    raise DataError(f"{where}: invalid UTF-8 at byte offset {e.start}; fix the file or set "
                    f"data.on_decode_error=skip to skip such documents") from None


def as_text(value, where: str, what: str, ctx: SourceContext) -> str | None:
  """A record's field as text: str as is, bytes through decode_utf8, numpy scalars unwrapped."""
  if hasattr(value, "item") and getattr(value, "shape", None) == ():
    value = value.item()
  if isinstance(value, bytes):
    return decode_utf8(value, where, ctx)
  if isinstance(value, str):
    return value
  raise DataError(f"{where}: {what} is {type(value).__name__}, not text; point text_field= at "
                  f"a raw text field")


def iter_documents(spec: str, ctx: SourceContext | None = None) -> Iterator[Document]:
  """Documents of one source spec string, in the source's deterministic order."""
  ctx = ctx or SourceContext()
  parsed = parse_spec(spec, "data.sources entry")
  if parsed.kind not in _SOURCES:
    raise DataError(f"unknown source kind {parsed.kind!r} in {spec!r}; use one of {kinds()}")
  return _SOURCES[parsed.kind](parsed, ctx)
