"""Test setup: 8 fake CPU devices so every sharding path is exercised.

XLA_FLAGS must be set before JAX is imported anywhere, which is why this lives in conftest.
"""
import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Prepared corpora go to a fresh per-session cache (inherited by CLI subprocesses), so tests
# never read or fill the user's ~/.cache/dlmscale.
os.environ["DLMSCALE_DATA_DIR"] = tempfile.mkdtemp(prefix="dlmscale-test-data-")
# Likewise compiled programs: CLI runs (and sweeps' runs) share a per-session cache, never the
# user's ~/.cache/dlmscale/jax_cache (see dlmscale/compilation_cache.py).
os.environ["DLMSCALE_COMPILATION_CACHE"] = tempfile.mkdtemp(prefix="dlmscale-test-jax-cache-")

import jax  # noqa: E402

jax.config.update("jax_threefry_partitionable", True)
