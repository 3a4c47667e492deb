"""Ordered, memory-bounded parallel map over worker processes.

multiprocessing.Pool.imap drains its whole input eagerly (a fast reader feeding slow
tokenizers would buffer the corpus in memory) and hangs when a worker dies; here at most
`window` tasks are in flight, a dead worker is an error, and results come back in input
order, so the output never depends on the worker count.
"""
import collections
import concurrent.futures
import multiprocessing
from concurrent.futures.process import BrokenProcessPool
from typing import Callable, Iterable, Iterator

from dlmscale.data.errors import DataError

_STATE = {}


def _init(setup: Callable, setup_args: tuple) -> None:
  _STATE["fn"] = setup(*setup_args)


def _call(item):
  return _STATE["fn"](item)


def ordered_map(setup: Callable, setup_args: tuple, items: Iterable, workers: int,
                window_per_worker: int = 4) -> Iterator:
  """Yields fn(item) in input order, where fn = setup(*setup_args) is built once per worker.

  `setup` and its args are pickled to each worker, which is spawned rather than forked: the
  parent may hold JAX/XLA threads that do not survive fork. workers <= 1 runs inline.
  """
  if workers <= 1:
    fn = setup(*setup_args)
    yield from map(fn, items)
    return
  ctx = multiprocessing.get_context("spawn")
  try:
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_init,
                                                initargs=(setup, setup_args)) as pool:
      pending = collections.deque()
      for item in items:
        pending.append(pool.submit(_call, item))
        if len(pending) >= workers * window_per_worker:
          yield pending.popleft().result()
      while pending:
        yield pending.popleft().result()
  except BrokenProcessPool as e:
    raise DataError(f"a prepare worker process died ({e}); retry with data.workers=1 to see "
                    f"the underlying error") from None
