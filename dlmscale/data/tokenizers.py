"""Tokenizers: each reserves an end-of-document id and a real mask id for diffusion."""
import hashlib
import json

import numpy as np

from dlmscale.data.errors import DataError


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then end-of-document (256) and mask (257)."""

  name = "byte"
  eod_id = 256
  mask_id = 257
  vocab_size = 258

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    ids_N = np.asarray(ids).reshape(-1)
    # Special ids are not text; dropping them keeps decode total on any stream slice.
    return bytes(ids_N[ids_N < 256].astype(np.uint8)).decode("utf-8", errors="replace")

  def fingerprint(self) -> str:
    spec = {"name": self.name, "eod_id": self.eod_id, "mask_id": self.mask_id,
            "vocab_size": self.vocab_size, "encoding": "utf-8", "version": 1}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]

  def __repr__(self) -> str:
    return "ByteTokenizer()"


_TOKENIZERS = {"byte": ByteTokenizer}


def get_tokenizer(name: str):
  """Returns a tokenizer instance by registered name."""
  if name not in _TOKENIZERS:
    raise DataError(f"unknown tokenizer {name!r}; use one of {sorted(_TOKENIZERS)}")
  return _TOKENIZERS[name]()
