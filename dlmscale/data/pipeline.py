"""The token-matched training stream: data order is a pure function of the step.

Sequences are permuted once by the seed and capped to the unique-token budget U, so a
smaller budget is a prefix (subset) of a larger one. Epoch e is a seed-and-e permutation
of that capped set; the stream is the epochs concatenated and global batch k is stream
entries [k*B, (k+1)*B). Nothing depends on the model, objective, mesh or process count.
"""
import functools
import hashlib
import json

import grain
import numpy as np

from dlmscale.data.errors import DataError
from dlmscale.data.iterator import StreamIterator
from dlmscale.data.shards import PreparedSplit

_HASH_ROWS = 1 << 14


def _seed_sequence(seed: int, *keys) -> np.random.SeedSequence:
  """Independent streams per purpose; string keys are hashed, not hash()-ed, for stability."""
  entropy = [seed]
  for k in keys:
    entropy.append(k if isinstance(k, int) else
                   int.from_bytes(hashlib.sha256(str(k).encode()).digest()[:8], "big"))
  return np.random.SeedSequence(entropy)


def _epoch_permutation(seed: int, n_unique: int, epoch: int) -> np.ndarray:
  return np.random.default_rng(_seed_sequence(seed, "epoch", epoch)).permutation(n_unique)


# Shared across instances: the AR and diffusion streams of one config reuse the same epochs.
# lru_cache is thread-safe, which the prefetching iterator relies on.
@functools.lru_cache(maxsize=16)
def _cached_epoch_permutation(seed: int, n_unique: int, epoch: int) -> np.ndarray:
  perm_U = _epoch_permutation(seed, n_unique, epoch)
  perm_U.flags.writeable = False
  return perm_U


class TokenStream:
  """Token-matched, seed-determined stream of global batches over a capped train set."""

  def __init__(self, train_NxL, *, unique_tokens: int, total_tokens: int,
               global_batch: int, seed: int, process_index: int = 0, process_count: int = 1,
               local_rows: tuple[int, int] | None = None):
    """train_NxL: an [N, L] array or a PreparedSplit (read on demand, never loaded whole).

    This process reads rows [start, stop) of every global batch: local_rows when given (the
    rows its devices hold, from parallel.process_batch_rows), else the process_index-th of
    process_count equal slices.
    """
    if not isinstance(train_NxL, PreparedSplit):
      train_NxL = np.asarray(train_NxL)
    if train_NxL.ndim != 2 or train_NxL.shape[0] == 0:
      raise DataError(f"train_NxL must be a non-empty [N, L] array, got shape "
                      f"{train_NxL.shape}; pass PreparedData.train")
    n, seq_len = train_NxL.shape
    available = n * seq_len
    if unique_tokens > available:
      raise DataError(f"unique_tokens={unique_tokens} exceeds the {available} prepared train "
                      f"tokens; lower unique_tokens or prepare a larger corpus")
    if unique_tokens < seq_len:
      raise DataError(f"unique_tokens={unique_tokens} is below one sequence of {seq_len} "
                      f"tokens; raise unique_tokens to at least {seq_len}")
    if global_batch < 1:
      raise DataError(f"global_batch must be positive, got {global_batch}")
    if process_count < 1 or not 0 <= process_index < process_count:
      raise DataError(f"process_index={process_index} must be in [0, process_count="
                      f"{process_count}); pass jax.process_index() and jax.process_count()")
    if global_batch % process_count:
      raise DataError(f"global_batch={global_batch} is not divisible by process_count="
                      f"{process_count}; pick a multiple of {process_count}")
    if total_tokens < global_batch * seq_len:
      raise DataError(f"total_tokens={total_tokens} is less than one global batch of "
                      f"{global_batch * seq_len} tokens; raise total_tokens or lower "
                      f"global_batch")
    if seed < 0:
      raise DataError(f"seed must be non-negative, got {seed}")
    self._train_NxL = train_NxL
    self._seq_len = seq_len
    self._unique_requested = int(unique_tokens)
    self._total_requested = int(total_tokens)
    self._global_batch = int(global_batch)
    self._seed = int(seed)
    self._fingerprints: dict[int, str] = {}
    if local_rows is None:
      per = global_batch // process_count
      local_rows = (process_index * per, (process_index + 1) * per)
    start, stop = map(int, local_rows)
    if not 0 <= start < stop <= global_batch:
      raise DataError(f"local_rows={local_rows} must be a non-empty range within the global "
                      f"batch of {global_batch}")
    self._local_start = start
    self._local_batch = stop - start
    self._n_unique = unique_tokens // seq_len
    self._num_steps = total_tokens // (global_batch * seq_len)
    # Permuting all N (not just the cap) is what makes budgets nested.
    order_N = np.random.default_rng(_seed_sequence(self._seed, "order")).permutation(n)
    self._capped_U = order_N[: self._n_unique]
    self._capped_U.flags.writeable = False

  # ---- sizes -------------------------------------------------------------------------
  @property
  def seq_len(self) -> int:
    return self._seq_len

  @property
  def global_batch(self) -> int:
    return self._global_batch

  @property
  def local_batch(self) -> int:
    return self._local_batch

  @property
  def n_unique(self) -> int:
    return self._n_unique

  @property
  def capped_indices(self) -> np.ndarray:
    """Rows of train_NxL in the unique-token budget, in budget order (read-only)."""
    return self._capped_U

  @property
  def unique_tokens_actual(self) -> int:
    return self._n_unique * self._seq_len

  @property
  def num_steps(self) -> int:
    return self._num_steps

  @property
  def tokens_per_step(self) -> int:
    return self._global_batch * self._seq_len

  @property
  def total_tokens_actual(self) -> int:
    return self._num_steps * self.tokens_per_step

  @property
  def num_epochs(self) -> float:
    return self.total_tokens_actual / self.unique_tokens_actual

  def epoch_at(self, step: int) -> float:
    """Epochs consumed before `step`."""
    return step * self._global_batch / self._n_unique

  # ---- batches -----------------------------------------------------------------------
  def _rows_at(self, start: int, stop: int) -> np.ndarray:
    """train_NxL rows of stream entries [start, stop)."""
    pos_S = np.arange(start, stop)
    epoch_S, offset_S = np.divmod(pos_S, self._n_unique)
    slot_S = np.empty_like(pos_S)
    for e in range(int(epoch_S[0]), int(epoch_S[-1]) + 1):
      in_e = epoch_S == e
      slot_S[in_e] = _cached_epoch_permutation(self._seed, self._n_unique, e)[offset_S[in_e]]
    return self._capped_U[slot_S]

  def _check_step(self, step: int) -> None:
    if not 0 <= step < self._num_steps:
      raise DataError(f"step {step} is outside the stream's [0, {self._num_steps}) steps")

  def global_batch_at(self, step: int) -> np.ndarray:
    """[B, L] int32 tokens of global batch `step`."""
    self._check_step(step)
    start = step * self._global_batch
    return self._train_NxL[self._rows_at(start, start + self._global_batch)].astype(np.int32)

  def local_batch_at(self, step: int) -> np.ndarray:
    """[B/P, L] int32: this process's contiguous rows of global batch `step`."""
    self._check_step(step)
    start = step * self._global_batch + self._local_start
    return self._train_NxL[self._rows_at(start, start + self._local_batch)].astype(np.int32)

  @property
  def dataset(self) -> grain.MapDataset:
    """Grain MapDataset whose element k is local_batch_at(k)."""
    return grain.MapDataset.range(self._num_steps).map(self.local_batch_at)

  def iterator(self, start_step: int = 0, prefetch: int = 2, workers: int = 0) -> StreamIterator:
    """Local batches from start_step; workers > 0 reads them in Grain worker processes."""
    return StreamIterator(self, start_step, prefetch, workers)

  # ---- identity ----------------------------------------------------------------------
  def fingerprint(self, num_steps: int | None = None) -> str:
    """sha256 over sizes, capped tokens and the stream order of the first num_steps.

    Equal fingerprints mean equal global token streams; the process split is excluded
    on purpose so runs on different meshes compare equal.
    """
    num_steps = self._num_steps if num_steps is None else num_steps
    if not 0 <= num_steps <= self._num_steps:
      raise DataError(f"num_steps={num_steps} must be in [0, {self._num_steps}]")
    # The stream is immutable and hashing the cap costs seconds at paper scale: hash once.
    if num_steps not in self._fingerprints:
      self._fingerprints[num_steps] = self._compute_fingerprint(num_steps)
    return self._fingerprints[num_steps]

  def _compute_fingerprint(self, num_steps: int) -> str:
    h = hashlib.sha256(json.dumps({
        "seq_len": self._seq_len, "n_unique": self._n_unique,
        "global_batch": self._global_batch, "num_steps": num_steps}).encode())
    # The capped content in budget order plus slots into it determine every batch.
    for i in range(0, self._n_unique, _HASH_ROWS):  # chunked: the cap can be GBs
      rows_C = self._capped_U[i:i + _HASH_ROWS]
      h.update(np.ascontiguousarray(self._train_NxL[rows_C], dtype="<i4").tobytes())
    remaining = num_steps * self._global_batch
    e = 0
    while remaining > 0:
      perm_U = _epoch_permutation(self._seed, self._n_unique, e)[:remaining]
      h.update(perm_U.astype("<i8").tobytes())
      remaining -= perm_U.size
      e += 1
    return h.hexdigest()

  def summary(self) -> dict:
    return {
        "seq_len": self._seq_len,
        "global_batch": self._global_batch,
        "unique_tokens_requested": self._unique_requested,
        "unique_tokens_actual": self.unique_tokens_actual,
        "n_unique_sequences": self._n_unique,
        "total_tokens_requested": self._total_requested,
        "total_tokens_actual": self.total_tokens_actual,
        "num_steps": self._num_steps,
        "num_epochs": self.num_epochs,
        "seed": self._seed,
        "fingerprint": self.fingerprint(),
    }


def array_fingerprint(x_NxL) -> str:
  """sha256 of shape and int32 content, so the storage dtype does not change it."""
  x_NxL = np.asarray(x_NxL)
  h = hashlib.sha256(repr(tuple(x_NxL.shape)).encode())
  h.update(np.ascontiguousarray(x_NxL, dtype="<i4").tobytes())
  return h.hexdigest()


def validation_batches(val_MxL: np.ndarray, batch_size: int) -> list[np.ndarray]:
  """Every validation row exactly once: full [batch_size, L] batches then a smaller last one."""
  if batch_size < 1:
    raise DataError(f"batch_size must be positive, got {batch_size}")
  if len(val_MxL) == 0:
    raise DataError("no validation sequences; load the corpus with a larger val_fraction")
  val_MxL = np.asarray(val_MxL, dtype=np.int32)
  return [val_MxL[i:i + batch_size] for i in range(0, len(val_MxL), batch_size)]


def validation_subset(val_MxL, max_sequences: int | None) -> np.ndarray:
  """[<=max, L] int32: evenly spaced rows, so a subset still covers every document region."""
  m = len(val_MxL)
  if max_sequences is None or max_sequences >= m:
    rows = np.arange(m)
  elif max_sequences < 1:
    raise DataError(f"max_val_sequences must be >= 1, got {max_sequences}")
  else:
    rows = np.arange(max_sequences) * m // max_sequences
  return np.asarray(val_MxL[rows], dtype=np.int32)
