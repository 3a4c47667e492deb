"""Checkpointable iterator over a TokenStream's local batches: threads or Grain processes."""
import collections
import concurrent.futures

import grain
import numpy as np

from dlmscale.data.errors import DataError


class StreamIterator:
  """Local batches from a step on; state is {"next_step": int}.

  Batches are pure functions of the step, so neither prefetching nor the number of worker
  processes can change what is yielded, and restoring needs only the next step.
  """

  def __init__(self, stream, start_step: int = 0, prefetch: int = 2, workers: int = 0):
    if prefetch < 0:
      raise DataError(f"prefetch must be >= 0, got {prefetch}")
    if workers < 0:
      raise DataError(f"data.loader_workers must be >= 0, got {workers}")
    self._stream = stream
    self._prefetch = prefetch
    self._workers = workers
    self._pool = None
    self._grain_it = None
    self._pending = collections.deque()  # (step, future), consecutive from _next_step
    self.set_state({"next_step": start_step})

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    step = self._next_step
    if step >= self._stream.num_steps:
      raise StopIteration
    if self._grain_it is not None:
      batch = next(self._grain_it)
    elif self._prefetch:
      _, future = self._pending.popleft()
      batch = future.result()
    else:
      batch = self._stream.local_batch_at(step)
    self._next_step = step + 1
    self._fill()
    return batch

  def _fill(self) -> None:
    if not self._prefetch or self._workers:
      return
    if self._pool is None:
      self._pool = concurrent.futures.ThreadPoolExecutor(1, "dlmscale-data")
    nxt = self._pending[-1][0] + 1 if self._pending else self._next_step
    while len(self._pending) < self._prefetch and nxt < self._stream.num_steps:
      self._pending.append((nxt, self._pool.submit(self._stream.local_batch_at, nxt)))
      nxt += 1

  def _start_grain(self) -> None:
    from absl import flags  # noqa: PLC0415
    if not flags.FLAGS.is_parsed():
      # Grain's worker processes read absl flags; a library caller (pytest, a notebook) has
      # not parsed any, and the defaults are what we want.
      flags.FLAGS.mark_as_parsed()
    ds = grain.MapDataset.range(self._next_step, self._stream.num_steps)
    ds = ds.map(self._stream.local_batch_at).to_iter_dataset(
        grain.ReadOptions(num_threads=1, prefetch_buffer_size=max(self._prefetch, 1)))
    ds = ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=self._workers))
    self._grain_it = iter(ds)

  def get_state(self) -> dict:
    return {"next_step": self._next_step}

  def set_state(self, state: dict) -> None:
    step = state.get("next_step") if isinstance(state, dict) else None
    if not isinstance(step, (int, np.integer)) or not 0 <= step <= self._stream.num_steps:
      raise DataError(f"iterator state {state!r} needs next_step in "
                      f"[0, {self._stream.num_steps}]; pass a dict from get_state()")
    self._stop_workers()
    self._next_step = int(step)
    if self._workers and self._next_step < self._stream.num_steps:
      self._start_grain()
    self._fill()

  def _stop_workers(self) -> None:
    for _, future in self._pending:
      future.cancel()
    self._pending.clear()
    if self._grain_it is not None:
      close = getattr(self._grain_it, "close", None)
      if close:
        close()
      self._grain_it = None

  def close(self) -> None:
    self._stop_workers()
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
      self._pool = None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
