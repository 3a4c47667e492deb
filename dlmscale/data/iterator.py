"""Checkpointable iterator over a TokenStream's local batches, with optional prefetch."""
import collections
import concurrent.futures

import numpy as np

from dlmscale.data.errors import DataError


class StreamIterator:
  """Local batches from a step on; state is {"next_step": int}.

  Batches are pure functions of the step, so prefetching cannot change what is yielded.
  """

  def __init__(self, stream, start_step: int = 0, prefetch: int = 2):
    if prefetch < 0:
      raise DataError(f"prefetch must be >= 0, got {prefetch}")
    self._stream = stream
    self._prefetch = prefetch
    self._pool = (concurrent.futures.ThreadPoolExecutor(1, "dlmscale-data")
                  if prefetch else None)
    self._pending = collections.deque()  # (step, future), consecutive from _next_step
    self.set_state({"next_step": start_step})

  def __iter__(self):
    return self

  def __next__(self) -> np.ndarray:
    step = self._next_step
    if step >= self._stream.num_steps:
      raise StopIteration
    if self._pool is None:
      batch = self._stream.local_batch_at(step)
    else:
      _, future = self._pending.popleft()
      batch = future.result()
    self._next_step = step + 1
    self._fill()
    return batch

  def _fill(self) -> None:
    if self._pool is None:
      return
    nxt = self._pending[-1][0] + 1 if self._pending else self._next_step
    while len(self._pending) < self._prefetch and nxt < self._stream.num_steps:
      self._pending.append((nxt, self._pool.submit(self._stream.local_batch_at, nxt)))
      nxt += 1

  def get_state(self) -> dict:
    return {"next_step": self._next_step}

  def set_state(self, state: dict) -> None:
    step = state.get("next_step") if isinstance(state, dict) else None
    if not isinstance(step, (int, np.integer)) or not 0 <= step <= self._stream.num_steps:
      raise DataError(f"iterator state {state!r} needs next_step in "
                      f"[0, {self._stream.num_steps}]; pass a dict from get_state()")
    for _, future in self._pending:
      future.cancel()
    self._pending.clear()
    self._next_step = int(step)
    self._fill()

  def close(self) -> None:
    if self._pool is not None:
      self._pool.shutdown(wait=False, cancel_futures=True)
      self._pool = None
      self._pending.clear()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()
