"""One JAX process of a multi-process data test: assembles every global batch and hashes it.

Run as N processes on loopback (CPU gloo collectives). Each process reads only its own rows
through the real path (prepared ArrayRecord split -> TokenStream slice from the batch
sharding -> StreamIterator -> make_array_from_process_local_data); the global array is then
gathered back to every host, and process 0 writes one sha256 per global batch to --out.
"""
import argparse
import hashlib
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from dlmscale import experiment, parallel  # noqa: E402
from dlmscale.data import ensure_prepared  # noqa: E402
from _shared import tiny_config  # noqa: E402


def main():
  p = argparse.ArgumentParser()
  p.add_argument("--port", type=int, required=True)
  p.add_argument("--num_processes", type=int, required=True)
  p.add_argument("--process_id", type=int, required=True)
  p.add_argument("--loader_workers", type=int, default=0)
  p.add_argument("--start_step", type=int, default=0)
  p.add_argument("--out", required=True)
  a = p.parse_args()
  if a.num_processes > 1:
    parallel.maybe_initialize_distributed(f"127.0.0.1:{a.port}", a.num_processes, a.process_id,
                                          "gloo")
  cfg = tiny_config()
  prepared = ensure_prepared(cfg.data)  # processes race to prepare: the rename is atomic
  mesh = parallel.make_mesh(dict(cfg.mesh))
  sharding = parallel.batch_sharding(mesh, tuple(cfg.rules))
  rows = parallel.process_batch_rows(sharding, cfg.train.global_batch, cfg.data.seq_len)
  stream = experiment.make_stream(cfg, prepared, rows)
  hashes = []
  with stream.iterator(a.start_step, workers=a.loader_workers) as batches:
    for local_BxL in batches:
      global_BxL = parallel.place_batch(local_BxL, sharding)
      full_BxL = np.asarray(multihost_utils.process_allgather(global_BxL, tiled=True))
      hashes.append(hashlib.sha256(full_BxL.astype("<i4").tobytes()).hexdigest())
  if jax.process_index() == 0:
    with open(a.out, "w") as f:
      json.dump({"hashes": hashes, "rows": rows, "fingerprint": stream.fingerprint(),
                 "devices": jax.device_count(), "processes": jax.process_count()}, f)


if __name__ == "__main__":
  main()
