"""Fake CPU devices under async dispatch: many programs with an all-reduce queued back to back.

On a 2-core host XLA's CPU client had 8 threads for 8 devices, and queued steps deadlocked in the
all-reduce ("Termination timeout ... Expected 8 threads to join", SIGABRT after 40 s). conftest
sets NPROC (the pool size XLA reads) to two threads per device; this runs the pattern that hung.
"""
import os
import subprocess
import sys

PROGRAM = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
mesh = Mesh(np.array(jax.devices()), ("d",))
assert mesh.size == 8, mesh
x_8xNxN = jax.device_put(jnp.ones((8, 256, 256)), NamedSharding(mesh, P("d")))

@jax.jit
def step(x_8xNxN):
  y = jnp.tanh(x_8xNxN @ x_8xNxN.transpose(0, 2, 1))
  return y / jnp.sum(y)  # the global sum is an all-reduce over the 8 devices

for _ in range(300):  # queued without waiting: each device runs ahead of the others
  x_8xNxN = step(x_8xNxN)
print("finite:", bool(jnp.isfinite(x_8xNxN).all()))
"""


def test_queued_collective_steps_on_8_fake_devices_finish():
  # XLA's own 40 s termination timeout turns a deadlock into an abort (exit code -6).
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=8")
  assert int(env["NPROC"]) >= 16  # set by conftest; inherited by every CLI subprocess
  proc = subprocess.run([sys.executable, "-c", PROGRAM], env=env, capture_output=True, text=True,
                        timeout=300)
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert proc.stdout.strip() == "finite: True"
