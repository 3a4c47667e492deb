"""Helpers shared by tokenizer kinds: canonical specs, reserved ids, fingerprints, model bytes."""
import hashlib
import json

from dlmscale.data.errors import DataError
from dlmscale.data.spec import Spec, take_options

# Reservation options shared by the kinds that load a model file.
RESERVE_DEFAULTS = {"eod": "", "mask": "", "append_special": True, "max_vocab": 0}


def spec_text(kind: str, target: str, options: dict, defaults: dict, full: bool = False) -> str:
  """Canonical `kind:target?k=v`, typed values rendered one way; defaults omitted unless full."""
  rendered = {}
  for key, value in options.items():
    if not full and value == defaults[key]:
      continue
    rendered[key] = ("true" if value else "false") if isinstance(value, bool) else str(value)
  return str(Spec(kind=kind, target=target, options=rendered))


def options_of(spec: Spec, defaults: dict) -> dict:
  """Typed options; the error names the tokenizer config value."""
  return take_options(spec, defaults, what="tokenizer")


def sha256_hex(data: bytes) -> str:
  return hashlib.sha256(data).hexdigest()


def fingerprint_of(fields: dict) -> str:
  """16 hex chars over a JSON dict: stable across processes, machines and Python versions."""
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:16]


def read_model_bytes(path: str) -> bytes:
  """Bytes of a local or cloud (gs://, s3://) model file."""
  if not path:
    raise DataError("tokenizer spec names no model file: use e.g. 'sentencepiece:/path/sp.model'")
  from etils import epath  # pylint: disable=g-import-not-at-top
  p = epath.Path(path)
  try:
    return p.read_bytes()
  except FileNotFoundError:
    raise DataError(f"tokenizer model {path} not found: check the path in the tokenizer "
                    "spec") from None
  except IsADirectoryError:
    raise DataError(f"tokenizer model {path} is a directory: name the model file "
                    "itself") from None


def reserve_ids(name: str, n_model: int, eod_id: int | None, mask_id: int | None,
                append_special: bool, max_vocab: int) -> tuple[int, int, int]:
  """(eod_id, mask_id, vocab_size): model ids where found, else new ids after the model's.

  `eod_id`/`mask_id` are the model's own special ids (None when it has none); appended ids are
  never produced by the encoder, so they are dedicated by construction.
  """
  next_id = n_model
  out = {}
  for what, found in (("end-of-document", eod_id), ("mask", mask_id)):
    if found is not None:
      out[what] = found
      continue
    if not append_special:
      piece = "<mask>" if what == "mask" else "</s>"
      raise DataError(f"tokenizer {name} has no {what} piece and append_special=false: add a "
                      f"{piece!r} control/special symbol when training it, or allow appending")
    out[what] = next_id
    next_id += 1
  if out["end-of-document"] == out["mask"]:
    raise DataError(f"tokenizer {name}: the end-of-document and mask ids are both "
                    f"{out['mask']}; name two different pieces with eod= and mask=")
  vocab_size = next_id
  if max_vocab and vocab_size > max_vocab:
    short = "mask id" if mask_id is None else "end-of-document id"
    raise DataError(f"tokenizer {name}: no room for the {short}: reserving it needs "
                    f"vocab_size {vocab_size} > max_vocab={max_vocab}; raise max_vocab or use a "
                    "model that has the piece")
  return out["end-of-document"], out["mask"], vocab_size
