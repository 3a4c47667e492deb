"""Device mesh, logical-axis rules, shardings, batch placement and multi-host start-up."""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Iterable, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlmscale.errors import ConfigError

MESH_AXES = ("data", "fsdp", "tensor", "expert")

# Logical axis -> mesh axis (or tuple of mesh axes, or None for replicated).
DEFAULT_RULES: tuple[tuple[str, object], ...] = (
    ("batch", ("data", "fsdp", "expert")),
    ("layers", None),
    ("embed", "fsdp"),
    ("vocab", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("kv", None),
    ("mlp", "tensor"),
    ("expert", "expert"),
    # Routed tokens grouped per expert: experts take the expert axis, so the token groups keep
    # only the other batch axes (the dispatch is then an all-to-all over the expert axis).
    ("expert_batch", ("data", "fsdp")),
    ("norm", None),
)


def resolve_mesh_shape(shape: Mapping[str, int], num_devices: int) -> dict[str, int]:
  """Fills the one -1 entry with the rest of the devices; checks the product equals the count."""
  unknown = [a for a in shape if a not in MESH_AXES]
  if unknown:
    raise ConfigError(f"unknown mesh axes {unknown}: mesh axes are {list(MESH_AXES)}")
  sizes = {a: int(shape.get(a, 1)) for a in MESH_AXES}
  fill = [a for a, s in sizes.items() if s == -1]
  if len(fill) > 1:
    raise ConfigError(f"mesh axes {fill} are all -1: at most one axis may take the rest")
  if any(s == 0 or s < -1 for s in sizes.values()):
    raise ConfigError(f"mesh sizes must be positive or -1, got {sizes}")
  fixed = math.prod(s for s in sizes.values() if s != -1)
  if fill:
    if num_devices % fixed:
      raise ConfigError(f"mesh {sizes} does not divide the {num_devices} devices: make the "
                        f"product of the fixed axes ({fixed}) a divisor of {num_devices}")
    sizes[fill[0]] = num_devices // fixed
  if math.prod(sizes.values()) != num_devices:
    raise ConfigError(f"mesh {sizes} has {math.prod(sizes.values())} devices but "
                      f"{num_devices} are available: set one axis to -1 or fix the sizes")
  return sizes


def make_mesh(shape: Mapping[str, int], devices: Sequence | None = None) -> Mesh:
  """A mesh over `devices` (default: all) with axes data, fsdp, tensor, expert."""
  devices = list(jax.devices() if devices is None else devices)
  sizes = resolve_mesh_shape(shape, len(devices))
  dims = tuple(sizes[a] for a in MESH_AXES)
  auto = (jax.sharding.AxisType.Auto,) * len(MESH_AXES)  # compiler-propagated (pjit) semantics
  if devices == list(jax.devices()):
    return jax.make_mesh(dims, MESH_AXES, devices=devices, axis_types=auto)
  return Mesh(np.asarray(devices).reshape(dims), MESH_AXES, axis_types=auto)


def _mesh_axes_for(name, rules: Mapping[str, object]) -> tuple[str, ...]:
  if name is None:
    return ()
  if name not in rules:
    raise ConfigError(f"logical axis {name!r} has no rule: add it to config.rules "
                      f"(known: {sorted(rules)})")
  target = rules[name]
  if target is None:
    return ()
  return (target,) if isinstance(target, str) else tuple(target)


def mesh_axes(name: str, rules: Mapping[str, object], mesh: Mesh) -> tuple[str, ...]:
  """The mesh axes (of size > 1) that logical axis `name` is split over; () when replicated."""
  return tuple(a for a in _mesh_axes_for(name, rules) if mesh.shape[a] > 1)


def logical_to_spec(axes: Iterable, rules: Mapping[str, object], mesh: Mesh,
                    shape: Sequence[int] | None = None, what: str = "array") -> P:
  """PartitionSpec for logical axes; a mesh axis is used once; divisibility is checked."""
  used: set[str] = set()
  spec = []
  for i, name in enumerate(axes):
    mesh_axes = tuple(a for a in _mesh_axes_for(name, rules)
                      if a not in used and mesh.shape[a] > 1)
    used.update(mesh_axes)
    if shape is not None and mesh_axes:
      n = math.prod(mesh.shape[a] for a in mesh_axes)
      if shape[i] % n:
        raise ConfigError(f"{what} dimension {i} ({name}={shape[i]}) is not divisible by mesh "
                          f"axes {mesh_axes} of size {n}: change the model size or the mesh")
    spec.append(mesh_axes[0] if len(mesh_axes) == 1 else (mesh_axes or None))
  return P(*spec)


def param_shardings(abstract_params, logical_axes, rules, mesh: Mesh):
  """NamedSharding pytree for params from their logical axes."""
  rules = dict(rules)

  def one(path, leaf, axes):
    what = "param " + "/".join(str(getattr(k, "key", k)) for k in path)
    return NamedSharding(mesh, logical_to_spec(axes, rules, mesh, leaf.shape, what))

  return jax.tree_util.tree_map_with_path(
      one, abstract_params, logical_axes, is_leaf=lambda x: isinstance(x, tuple) and not x)


def batch_sharding(mesh: Mesh, rules) -> NamedSharding:
  """Sharding of [B, L] token batches: batch over the data-parallel axes, sequence replicated."""
  return NamedSharding(mesh, logical_to_spec(("batch", None), dict(rules), mesh))


def data_parallel_size(mesh: Mesh, rules) -> int:
  spec = batch_sharding(mesh, rules).spec[0]
  axes = () if spec is None else ((spec,) if isinstance(spec, str) else spec)
  return math.prod(mesh.shape[a] for a in axes)


def place_batch(local_batch: np.ndarray, sharding: NamedSharding) -> jax.Array:
  """This process's rows of the global batch -> a global jax.Array."""
  return jax.make_array_from_process_local_data(sharding, local_batch)


def process_batch_rows(sharding: NamedSharding, global_batch: int, seq_len: int
                       ) -> tuple[int, int]:
  """[start, stop): the global-batch rows this process's devices hold under `sharding`.

  Which rows a process holds follows the mesh's device order, not the process index, so the
  data pipeline asks the sharding instead of assuming process i holds the i-th slice.
  """
  index_map = sharding.addressable_devices_indices_map((global_batch, seq_len))
  rows = sorted({idx[0].indices(global_batch)[:2] for idx in index_map.values()})
  start, stop = rows[0][0], rows[-1][1]
  covered = sum(b - a for a, b in rows)
  if covered != stop - start or any(b > c for (_, b), (c, _) in zip(rows, rows[1:])):
    raise ConfigError(f"this process's devices hold non-contiguous batch rows {rows}; order the "
                     f"mesh so each process's devices are adjacent along the batch axes")
  return start, stop


_ACTIVATION_MESH = contextvars.ContextVar("dlmscale_activation_mesh", default=None)


@contextlib.contextmanager
def activation_sharding(mesh: Mesh, rules):
  """While tracing inside this context, `constrain` pins activations to the mesh by the rules.

  Without it, XLA infers activation layouts from the parameters' shardings: under FSDP (params
  sharded on `embed`) it may keep the residual stream sharded on its feature axis and replicated
  over the batch, which multiplies temporaries per chip (BENCHMARKS.md, "TPU compile")."""
  token = _ACTIVATION_MESH.set((mesh, dict(rules)))
  try:
    yield
  finally:
    _ACTIVATION_MESH.reset(token)


def activation_context():
  """(mesh, rules) of the enclosing `activation_sharding`, or None outside one."""
  return _ACTIVATION_MESH.get()


def constrain(x, logical_axes: Sequence):
  """x with a sharding constraint from its logical axes (e.g. ("batch", None, None)) when traced
  inside `activation_sharding`; unchanged otherwise (evaluation, sampling, unsharded tests)."""
  context = _ACTIVATION_MESH.get()
  if context is None:
    return x
  mesh, rules = context
  spec = logical_to_spec(logical_axes, rules, mesh)
  if any(dim % math.prod(mesh.shape[a] for a in ((s,) if isinstance(s, str) else s)) for dim, s
         in zip(x.shape, spec) if s is not None):
    return x  # e.g. a batch smaller than the data axes (sampling one row): let XLA choose
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def maybe_initialize_distributed(coordinator_address: str | None, num_processes: int | None,
                                 process_id: int | None, cpu_collectives: str | None = None,
                                 auto: bool = False):
  """Joins a multi-process job when asked.

  auto: jax.distributed.initialize() with no arguments, which finds the peers itself on Cloud
  TPU slices, Slurm and Open MPI (what launch/tpu_vm.sh passes via --multihost).
  """
  if cpu_collectives:
    jax.config.update("jax_cpu_collectives_implementation", cpu_collectives)
  if coordinator_address or (num_processes or 1) > 1:
    try:
      jax.distributed.initialize(coordinator_address=coordinator_address,
                                 num_processes=num_processes, process_id=process_id)
    except ValueError as e:  # e.g. no coordinator given and no cluster around to name one
      raise ConfigError(f"cannot join a multi-process job ({e}): pass --coordinator_address="
                        "HOST:PORT (process 0's), --num_processes and --process_id, or "
                        "--multihost where jax finds its peers") from None
  elif auto:
    jax.distributed.initialize()
