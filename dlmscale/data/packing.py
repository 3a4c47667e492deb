"""Pure numpy helpers: the train/validation split and fixed-length packing."""
import hashlib
from typing import Iterable

import numpy as np

from dlmscale.data.errors import DataError


def is_validation(doc_name: str, val_fraction: float, seed: int) -> bool:
  """Whether a document is held out; a stable hash so it agrees on every machine."""
  digest = hashlib.sha256(f"{seed}\x00{doc_name}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 halves storage whenever every id fits."""
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


def pack(token_arrays: Iterable[np.ndarray], seq_len: int, eod_id: int,
         dtype=np.int32) -> np.ndarray:
  """Concatenates documents, each followed by eod_id, into [N, seq_len]; drops the tail."""
  if seq_len < 1:
    raise DataError(f"seq_len must be positive, got {seq_len}; pass seq_len >= 1")
  dtype = np.dtype(dtype)
  info = np.iinfo(dtype)
  if not info.min <= eod_id <= info.max:
    raise DataError(f"eod_id {eod_id} does not fit {dtype}; pack with a wider dtype")
  eod_1 = np.array([eod_id], dtype=dtype)
  pieces = []
  for ids_T in token_arrays:
    ids_T = np.asarray(ids_T)
    # Casting silently wraps out-of-range ids, which would corrupt the corpus.
    if ids_T.size and (ids_T.min() < info.min or ids_T.max() > info.max):
      raise DataError(f"token ids out of range for {dtype}; pack with a wider dtype")
    pieces.append(ids_T.astype(dtype, copy=False))
    pieces.append(eod_1)
  if not pieces:
    return np.zeros((0, seq_len), dtype=dtype)
  stream_T = np.concatenate(pieces)
  n = stream_T.size // seq_len
  return stream_T[: n * seq_len].reshape(n, seq_len)
