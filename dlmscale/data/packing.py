"""Pure numpy helpers: the train/validation split and fixed-length packing."""
import hashlib
from typing import Iterable, Iterator

import numpy as np

from dlmscale.data.errors import DataError


def is_validation(doc_name: str, val_fraction: float, seed: int) -> bool:
  """Whether a document is held out; a stable hash so it agrees on every machine."""
  digest = hashlib.sha256(f"{seed}\x00{doc_name}".encode("utf-8")).digest()
  return int.from_bytes(digest[:8], "big") / 2.0**64 < val_fraction


def token_dtype(vocab_size: int) -> np.dtype:
  """uint16 halves storage whenever every id fits."""
  return np.dtype(np.uint16) if vocab_size <= 2**16 else np.dtype(np.int32)


class Packer:
  """Streams documents, each followed by eod_id, into full [seq_len] rows.

  Memory is one sequence of carry-over plus the current document, whatever the corpus size.
  """

  def __init__(self, seq_len: int, eod_id: int, dtype=np.int32):
    if seq_len < 1:
      raise DataError(f"seq_len must be positive, got {seq_len}; pass seq_len >= 1")
    self.seq_len = seq_len
    self.dtype = np.dtype(dtype)
    self._info = np.iinfo(self.dtype)
    if not self._info.min <= eod_id <= self._info.max:
      raise DataError(f"eod_id {eod_id} does not fit {self.dtype}; pack with a wider dtype")
    self._eod_1 = np.array([eod_id], dtype=self.dtype)
    self._carry = np.zeros(0, dtype=self.dtype)
    self.num_documents = 0
    self.num_tokens = 0  # document tokens including one eod each

  def add(self, ids_T) -> np.ndarray:
    """Appends one document; returns the [R, seq_len] rows it completed (R may be 0)."""
    ids_T = np.asarray(ids_T)
    # Casting silently wraps out-of-range ids, which would corrupt the corpus.
    if ids_T.size and (ids_T.min() < self._info.min or ids_T.max() > self._info.max):
      raise DataError(f"token ids out of range for {self.dtype}; pack with a wider dtype")
    self.num_documents += 1
    self.num_tokens += ids_T.size + 1
    stream_T = np.concatenate([self._carry, ids_T.astype(self.dtype, copy=False), self._eod_1])
    n = stream_T.size // self.seq_len
    self._carry = stream_T[n * self.seq_len:]
    return stream_T[: n * self.seq_len].reshape(n, self.seq_len)

  @property
  def tail_tokens(self) -> int:
    """Tokens left over after the last full row; dropped, never padded."""
    return int(self._carry.size)


def pack(token_arrays: Iterable[np.ndarray], seq_len: int, eod_id: int,
         dtype=np.int32) -> np.ndarray:
  """Concatenates documents, each followed by eod_id, into [N, seq_len]; drops the tail."""
  packer = Packer(seq_len, eod_id, dtype)
  rows = [packer.add(ids_T) for ids_T in token_arrays]
  rows = [r for r in rows if len(r)]
  return np.concatenate(rows) if rows else np.zeros((0, seq_len), dtype=packer.dtype)


def iter_packed(token_arrays: Iterable[np.ndarray], packer: Packer) -> Iterator[np.ndarray]:
  """[R, seq_len] row blocks as documents complete them."""
  for ids_T in token_arrays:
    rows_RxL = packer.add(ids_T)
    if len(rows_RxL):
      yield rows_RxL
