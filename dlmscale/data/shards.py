"""ArrayRecord shards of packed sequences: one record per [seq_len] row, little-endian ids.

Writers record each shard's record count, byte size and content hash in meta.json; readers
check counts and sizes on open, because ArrayRecord opens a truncated file as a shorter one
without complaint.
"""
import hashlib
import os
import threading

import numpy as np

from dlmscale.data.errors import DataError

# group_size 1: every row is one random read; uncompressed: ids barely compress and writing
# with compression is ~5x slower, which would make the writer the bottleneck of prepare.
WRITER_OPTIONS = "group_size:1,uncompressed"
READER_OPTIONS = "readahead_buffer_size:0"


def shard_name(split: str, index: int) -> str:
  return f"{split}-{index:05d}.array_record"


def rows_digest(rows_RxL: np.ndarray, h=None):
  """Updates (or starts) a sha256 over rows as little-endian int32, independent of storage."""
  h = h or hashlib.sha256()
  h.update(np.ascontiguousarray(rows_RxL, dtype="<i4").tobytes())
  return h


class ShardWriter:
  """Writes rows of one split into numbered shards of at most `records_per_shard` rows."""

  def __init__(self, directory: str, split: str, seq_len: int, dtype, records_per_shard: int):
    if records_per_shard < 1:
      raise DataError(f"data.records_per_shard must be >= 1, got {records_per_shard}")
    self._dir = directory
    self._split = split
    self._seq_len = seq_len
    self._dtype = np.dtype(dtype).newbyteorder("<")
    self._per_shard = records_per_shard
    self._writer = None
    self._in_shard = 0
    self.shards: list[dict] = []
    self.num_records = 0
    self._hash = hashlib.sha256()

  def write(self, rows_RxL: np.ndarray) -> None:
    from array_record.python import array_record_module  # noqa: PLC0415  (heavy native module)
    rows_RxL = np.asarray(rows_RxL)
    if rows_RxL.ndim != 2 or rows_RxL.shape[1] != self._seq_len:
      raise DataError(f"rows must be [R, {self._seq_len}], got {rows_RxL.shape}")
    rows_RxL = rows_RxL.astype(self._dtype, copy=False)
    rows_digest(rows_RxL, self._hash)
    for row_L in rows_RxL:
      if self._writer is None:
        path = os.path.join(self._dir, shard_name(self._split, len(self.shards)))
        self._writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
        self.shards.append({"file": os.path.basename(path), "num_records": 0})
      self._writer.write(row_L.tobytes())
      self._in_shard += 1
      self.num_records += 1
      if self._in_shard == self._per_shard:
        self._close_shard()

  def _close_shard(self) -> None:
    self._writer.close()
    self._writer = None
    shard = self.shards[-1]
    shard["num_records"] = self._in_shard
    shard["bytes"] = os.path.getsize(os.path.join(self._dir, shard["file"]))
    self._in_shard = 0

  def close(self) -> dict:
    """Finishes the last shard; returns the split's meta (shards, counts, content hash)."""
    if self._writer is not None:
      self._close_shard()
    return {"num_sequences": self.num_records, "shards": self.shards,
            "fingerprint": self._hash.hexdigest()}


class PreparedSplit:
  """Read-only [N, seq_len] view of a split's shards: len, shape and row-array indexing.

  Picklable (readers reopen lazily), so Grain worker processes can read it too. Record counts
  are checked against meta.json when the shards are first read.
  """

  def __init__(self, directory: str, split: str, split_meta: dict, seq_len: int, dtype: str):
    self._dir = directory
    self._split = split
    self._meta = split_meta
    self._seq_len = seq_len
    self.dtype = np.dtype(dtype).newbyteorder("<")
    for shard in split_meta["shards"]:
      path = os.path.join(directory, shard["file"])
      if not os.path.exists(path):
        raise DataError(f"shard {path} is missing; re-run prepare into a fresh prepared_dir")
      size = os.path.getsize(path)
      if size != shard["bytes"]:
        raise DataError(f"shard {path} has {size} bytes, meta.json says {shard['bytes']} "
                        f"(truncated or replaced); re-run prepare into a fresh prepared_dir")
    self._paths = [os.path.join(directory, s["file"]) for s in split_meta["shards"]]
    counts = [s["num_records"] for s in split_meta["shards"]]
    self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    self._n = int(self._starts[-1])
    self._readers, self._lock = None, threading.Lock()

  def __getstate__(self):
    # Open readers hold native file handles: workers reopen their own.
    return {k: v for k, v in self.__dict__.items() if k not in ("_readers", "_lock")}

  def __setstate__(self, state):
    self.__dict__.update(state)
    self._readers, self._lock = None, threading.Lock()

  def _open(self) -> list:
    from array_record.python import array_record_module  # noqa: PLC0415
    readers = []
    for path, shard in zip(self._paths, self._meta["shards"]):
      # No readahead: rows are random reads, and the default buffer reads megabytes per row.
      r = array_record_module.ArrayRecordReader(path, READER_OPTIONS)
      if r.num_records() != shard["num_records"]:
        raise DataError(f"shard {path} holds {r.num_records()} records, meta.json says "
                        f"{shard['num_records']}; re-run prepare into a fresh prepared_dir")
      readers.append(r)
    return readers

  def __len__(self) -> int:
    return self._n

  @property
  def shape(self) -> tuple[int, int]:
    return (self._n, self._seq_len)

  @property
  def ndim(self) -> int:
    return 2

  @property
  def fingerprint(self) -> str:
    return self._meta["fingerprint"]

  def __getitem__(self, rows) -> np.ndarray:
    """Rows in the order given: an int array gives [R, L], a slice gives its rows."""
    if isinstance(rows, slice):
      rows = np.arange(self._n)[rows]
    rows_R = np.asarray(rows, dtype=np.int64).reshape(-1)
    if rows_R.size and (rows_R.min() < 0 or rows_R.max() >= self._n):
      raise DataError(f"row index out of range [0, {self._n}) in the {self._split} split")
    if not rows_R.size:
      return np.zeros((0, self._seq_len), dtype=self.dtype)
    shard_R = np.searchsorted(self._starts, rows_R, side="right") - 1
    out = [None] * rows_R.size
    with self._lock:  # readers are not documented thread-safe; prefetch reads from a thread
      if self._readers is None:
        self._readers = self._open()
      for shard in np.unique(shard_R):
        at_S = np.flatnonzero(shard_R == shard)
        local = (rows_R[at_S] - self._starts[shard]).tolist()
        for i, record in zip(at_S, self._readers[shard].read(local)):
          out[i] = record
    return np.frombuffer(b"".join(out), dtype=self.dtype).reshape(-1, self._seq_len)

  def iter_blocks(self, block_rows: int = 1 << 14):
    """All rows in order, [<=block_rows, L] at a time (bounded memory)."""
    for start in range(0, self._n, block_rows):
      yield self[np.arange(start, min(start + block_rows, self._n))]

  @property
  def nbytes(self) -> int:
    return self._n * self._seq_len * self.dtype.itemsize

  def to_numpy(self) -> np.ndarray:
    """The whole split in memory, read shard by shard sequentially (read-only)."""
    with self._lock:
      if self._readers is None:
        self._readers = self._open()
      blobs = [b"".join(r.read_all()) for r in self._readers]
    out = np.frombuffer(b"".join(blobs), dtype=self.dtype).reshape(-1, self._seq_len)
    return out
