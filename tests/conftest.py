"""Test setup: 8 fake CPU devices so every sharding path is exercised.

XLA_FLAGS must be set before JAX is imported anywhere, which is why this lives in conftest.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA's CPU client runs the devices' shares of a program on one pool of max(NPROC or cores,
# devices) threads. Programs with collectives dispatched ahead of one another need about two
# threads per device: with fewer (8 on a 2-core host) 7 of 8 devices can wait in an all-reduce
# for an 8th that never gets a thread, and XLA aborts after 40 s ("Termination timeout ...
# Expected 8 threads to join"). NPROC is what XLA reads for that size; subprocesses inherit it.
_nproc = os.environ.get("NPROC", "")
os.environ["NPROC"] = str(max(16, int(_nproc) if _nproc.isdigit() else 0))
# Prepared corpora go to a fresh per-session cache (inherited by CLI subprocesses), so tests
# never read or fill the user's ~/.cache/dlmscale.
os.environ["DLMSCALE_DATA_DIR"] = tempfile.mkdtemp(prefix="dlmscale-test-data-")
# Likewise compiled programs: CLI runs (and sweeps' runs) share a per-session cache, never the
# user's ~/.cache/dlmscale/jax_cache (see dlmscale/compilation_cache.py).
os.environ["DLMSCALE_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="dlmscale-test-jax-cache-")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
