"""What a preparation is made from: the data-config fields that decide the prepared content."""
from __future__ import annotations

import dataclasses
import hashlib
import json

from dlmscale.data import sources as sources_lib
from dlmscale.data.errors import DataError
from dlmscale.data.spec import parse_spec, split_specs

FORMAT_VERSION = 1
MAX_SEQ_LEN = 1 << 17
# 'directory' holds out whole folders: templated families (the stdlib's encodings/cp*.py)
# then land on one side of the split instead of leaking near-copies into validation.
SPLIT_UNITS = ("document", "directory")


def split_group(name: str, unit: str) -> str:
  """The unit a document is held out with: itself, or its folder (top-level files alone)."""
  if unit == "directory" and "/" in name.split("#", 1)[0]:
    return name.split("#", 1)[0].rsplit("/", 1)[0] + "/"
  return name


@dataclasses.dataclass(frozen=True)
class PrepareSpec:
  """The data-config fields that decide the prepared content (and nothing else)."""

  sources: tuple[str, ...]
  tokenizer: str
  on_decode_error: str
  decontaminate: tuple[str, ...]
  decontaminate_ngram: int
  seq_len: int
  val_fraction: float
  split_seed: int
  split_unit: str

  @classmethod
  def from_config(cls, d) -> "PrepareSpec":
    names = tuple(n.strip() for n in str(d.decontaminate).split(",") if n.strip())
    spec = cls(sources=tuple(split_specs(d.sources, "data.sources")), tokenizer=str(d.tokenizer),
               on_decode_error=str(d.on_decode_error), decontaminate=names,
               decontaminate_ngram=int(d.decontaminate_ngram), seq_len=int(d.seq_len),
               val_fraction=float(d.val_fraction), split_seed=int(d.split_seed),
               split_unit=str(d.split_unit))
    spec.validate()
    return spec

  def validate(self) -> None:
    if not 2 <= self.seq_len <= MAX_SEQ_LEN:
      raise DataError(f"data.seq_len must be in [2, {MAX_SEQ_LEN}], got {self.seq_len}")
    if not 0.0 < self.val_fraction < 1.0:
      raise DataError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}; e.g. 0.02")
    if self.on_decode_error not in sources_lib.DECODE_POLICIES:
      raise DataError(f"data.on_decode_error must be one of {list(sources_lib.DECODE_POLICIES)}"
                      f", got {self.on_decode_error!r}")
    if self.split_unit not in SPLIT_UNITS:
      raise DataError(f"data.split_unit must be one of {list(SPLIT_UNITS)}, got "
                      f"{self.split_unit!r}")
    if self.decontaminate and self.decontaminate_ngram < 1:
      raise DataError(f"data.decontaminate_ngram must be >= 1, got {self.decontaminate_ngram}")
    for s in self.sources:
      kind = parse_spec(s, "data.sources entry").kind
      if kind not in sources_lib.kinds():
        raise DataError(f"unknown source kind {kind!r} in {s!r}; use one of "
                        f"{sources_lib.kinds()}")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

  def key(self) -> str:
    """Content address of the prepared data this spec produces."""
    blob = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def check_same_spec(meta: dict, spec: PrepareSpec, directory: str) -> None:
  """Errors when prepared data was made from another data config than `spec`."""
  if meta.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{directory} has prepared-data format {meta.get('format_version')}, this "
                    f"dlmscale reads {FORMAT_VERSION}; re-run prepare into a fresh prepared_dir")
  if meta.get("prepare_key") == spec.key():
    return
  old, new = meta.get("spec", {}), spec.to_dict()
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  raise DataError(f"{directory} was prepared from another data config (differs at "
                  f"{', '.join('data.' + k for k in diff)}: prepared {old.get(diff[0])!r}, "
                  f"config {new.get(diff[0])!r}); use another data.prepared_dir or the "
                  f"original settings")
