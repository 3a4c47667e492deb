"""Compile mode: the real sharded train step compiled by libtpu for a named TPU topology, on a CPU.

No TPU and no data are needed: the mesh is built over libtpu's compile-only devices for the
topology, the state and batch are jax.ShapeDtypeStructs with their shardings, and the compiled
program reports per-chip memory and FLOPs. That is how a pod config is checked before it is run.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re
import time

import jax
import jax.numpy as jnp

from dlmscale import config as config_lib
from dlmscale import flops, parallel
from dlmscale.errors import DlmscaleError
from dlmscale.experiment import abstract_state, build_step, tokenizer_ids


class CompileError(DlmscaleError):
  """The topology is unknown, libtpu is missing, or the step does not compile."""


class DoesNotFitError(CompileError):
  """The compiled step needs more memory per chip than the chip has; `report` holds the numbers."""

  def __init__(self, message: str, report: dict | None = None):
    super().__init__(message)
    self.report = report


@dataclasses.dataclass(frozen=True)
class Topology:
  """A TPU slice: the topology string libtpu understands, chips, HBM and peak bf16 per chip."""
  name: str
  libtpu_name: str  # "<generation>:<chip grid>"
  chips: int
  hbm_bytes: int
  device_kind: str  # what jax reports; keys flops.PEAK_FLOPS
  # v4 and v5p chips hold two TensorCores; "megacore" makes them one device, as on a TPU VM.
  chip_config: str | None = None

  @property
  def peak_flops_per_chip(self) -> float:
    return flops.PEAK_FLOPS[self.device_kind]


def _slices(gen: str, kind: str, hbm_gib: float, grids: dict[int, str], cores_per_chip: int,
            aliases: tuple[str, ...] = (), chip_config: str | None = None) -> dict:
  """Cloud TPU names: v4/v5p count TensorCores (2 per chip), v5e/v6e count chips."""
  out = {}
  for chips, grid in grids.items():
    for prefix in (gen, *aliases):
      name = f"{prefix}-{chips * cores_per_chip}"
      out[name] = Topology(name, f"{gen}:{grid}", chips, int(hbm_gib * 2**30), kind,
                           chip_config)
  return out


_3D = {4: "2x2x1", 8: "2x2x2", 16: "2x2x4", 32: "2x4x4", 64: "4x4x4", 128: "4x4x8",
       256: "4x8x8", 512: "8x8x8"}
_2D = {1: "1x1", 4: "2x2", 8: "2x4", 16: "4x4", 32: "4x8", 64: "8x8", 128: "8x16",
       256: "16x16"}
# HBM per chip: what libtpu's compiler says is available when a step does not fit (v5e, v5p),
# else the nominal capacity.
TOPOLOGIES: dict[str, Topology] = {
    **_slices("v4", "TPU v4", 32, _3D, 2, chip_config="megacore"),
    **_slices("v5p", "TPU v5", 95.74, _3D, 2, chip_config="megacore"),
    **_slices("v5e", "TPU v5 lite", 15.75, _2D, 1, aliases=("v5litepod",)),
    **_slices("v6e", "TPU v6 lite", 32, _2D, 1),
}


def get_topology(name: str) -> Topology:
  if name not in TOPOLOGIES:
    raise CompileError(f"unknown topology {name!r}: use one of {', '.join(TOPOLOGIES)}")
  return TOPOLOGIES[name]


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def topology_devices(topology: Topology) -> list:
  """libtpu's compile-only devices for the slice (no TPU attached)."""
  if not libtpu_available():
    raise CompileError("compile mode needs libtpu's compiler: pip install 'dlmscale[tpu]' "
                       "(or jax[tpu]), then rerun")
  from jax.experimental import topologies
  kwargs = {"chip_config_name": topology.chip_config} if topology.chip_config else {}
  # Off a TPU VM, libtpu prints warnings on load unless it is told what VM it is on; only its
  # compile-only client is used here, so any consistent answer does. Its lockfile guards a real
  # TPU against two processes; compiling touches no TPU, so parallel compiles are allowed.
  quiet = {"TPU_ACCELERATOR_TYPE": topology.name, "TPU_WORKER_HOSTNAMES": "localhost",
           "ALLOW_MULTIPLE_LIBTPU_LOAD": "1"}
  saved = {k: os.environ.get(k) for k in quiet}
  os.environ.update({k: v for k, v in quiet.items() if not saved[k]})
  try:
    devices = topologies.get_topology_desc(topology.libtpu_name, "tpu", **kwargs).devices
  except jax.errors.JaxRuntimeError as e:
    raise CompileError(f"libtpu could not describe {topology.name} ({topology.libtpu_name}): "
                       f"{' '.join(str(e).split())[:300]}") from e
  finally:
    for k, v in saved.items():
      if not v:
        os.environ.pop(k, None)
  if len(devices) != topology.chips:
    raise CompileError(f"libtpu made {len(devices)} devices for {topology.name} "
                       f"({topology.libtpu_name}), expected {topology.chips}")
  return list(devices)


def _knobs(cfg, batch_per_chip: float) -> str:
  t, m = cfg.train, cfg.model
  return (f"lower the batch per chip ({batch_per_chip:g} sequences: train.global_batch="
          f"{t.global_batch} / train.grad_accum={t.grad_accum} / data-parallel chips), set "
          f"model.remat (now {m.remat!r}; 'full' saves the most), or shard the parameters over "
          f"more chips with mesh.fsdp (now {cfg.mesh.fsdp})")


def compile_for_topology(cfg, objective: str, topology: str | Topology, *,
                         check_fit: bool = True) -> dict:
  """Lowers and compiles the train step of `objective` for `topology`; returns per-chip memory,
  compiler vs analytic FLOPs and compile time. Raises DoesNotFitError past the chip's HBM unless
  check_fit is False (the report then says fits: False)."""
  config_lib.validate(cfg)
  topo = topology if isinstance(topology, Topology) else get_topology(topology)
  devices = topology_devices(topo)
  vocab, mask_id = tokenizer_ids(cfg)
  t, d = cfg.train, cfg.data
  mesh = parallel.make_mesh(dict(cfg.mesh), devices)
  # The step training would run, minus the token stream (its length comes from the budget).
  num_steps = max(1, d.total_tokens // (t.global_batch * d.seq_len))
  built = build_step(cfg, objective, mesh, vocab_size=vocab, mask_id=mask_id, num_steps=num_steps)
  model, shardings, b_sh = built.model, built.shardings, built.batch_sharding
  micro = t.global_batch // t.grad_accum
  dp = parallel.data_parallel_size(mesh, tuple(cfg.rules))

  abstract = abstract_state(built, cfg.seed)
  state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                       abstract, shardings)
  batch = jax.ShapeDtypeStruct((t.global_batch, d.seq_len), jnp.int32, sharding=b_sh)
  batch_per_chip = micro / dp
  start = time.time()
  try:
    compiled = built.step_fn.lower(state, batch).compile()
  except jax.errors.JaxRuntimeError as e:
    text = " ".join(str(e).split())
    if "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower():
      # e.g. "the total memory required for HLO temporaries (3.58T) exceeds available HBM (95.74G)"
      said = re.search(r"memory required for (.*?exceeds available HBM \([^)]*\))", text)
      said = f" ({said.group(1)})" if said else ""
      raise DoesNotFitError(f"{topo.name}: the {objective} step does not fit in HBM per chip{said}:"
                            f" {_knobs(cfg, batch_per_chip)}") from e
    raise CompileError(f"{topo.name}: libtpu failed to compile the {objective} step: "
                       f"{text[:300]}") from e
  compile_s = time.time() - start

  mem = compiled.memory_analysis()
  # Donated state aliases its outputs: count those bytes once.
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes - mem.alias_size_in_bytes
           + mem.temp_size_in_bytes + mem.generated_code_size_in_bytes)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  tokens_per_step = t.global_batch * d.seq_len
  analytic = flops.train_flops_per_token(model.cfg, d.seq_len) * tokens_per_step / topo.chips
  compiler_flops = float(cost.get("flops", 0.0))
  # XLA's cost analysis does not see into a Pallas kernel: with splash attention (layers.
  # attention_impl) the compiler's FLOPs leave out the attention scores and values.
  kernel = "splash_mha" in compiled.as_text()
  attention = (flops.train_flops_per_token(model.cfg, d.seq_len) - 6.0 * flops.matmul_params(
      model.cfg)) * tokens_per_step / topo.chips
  params = model.param_counts()["total"]
  report = {
      "topology": topo.name, "libtpu_topology": topo.libtpu_name, "chips": topo.chips,
      "device_kind": devices[0].device_kind, "objective": objective,
      "mesh": {k: int(v) for k, v in mesh.shape.items()},
      "params": params, "param_bytes": _param_bytes(abstract["params"]),
      "global_batch": t.global_batch, "seq_len": d.seq_len, "grad_accum": t.grad_accum,
      "batch_per_chip": batch_per_chip, "remat": cfg.model.remat,
      "memory_per_chip": {"arguments": mem.argument_size_in_bytes,
                          "outputs": mem.output_size_in_bytes,
                          "aliased": mem.alias_size_in_bytes,
                          "temporaries": mem.temp_size_in_bytes,
                          "generated_code": mem.generated_code_size_in_bytes, "total": total},
      "hbm_per_chip": topo.hbm_bytes, "hbm_fraction": total / topo.hbm_bytes,
      "fits": total <= topo.hbm_bytes,
      "compiler_flops_per_chip": compiler_flops, "analytic_flops_per_chip": analytic,
      # XLA's cost analysis counts a loop body once: with model.scan_layers the compiler's FLOPs
      # hold one layer, not num_layers (set model.scan_layers=False to compare whole steps).
      "layer_loop_counted_once": bool(cfg.model.scan_layers and cfg.model.num_layers > 1),
      "compiler_over_analytic": compiler_flops / analytic if analytic else None,
      "attention_kernel": kernel, "analytic_attention_flops_per_chip": attention,
      "compiler_over_analytic_without_attention":
          compiler_flops / (analytic - attention) if analytic > attention else None,
      # Step time at 100% MFU: a floor for what the slice can do with this config.
      "ideal_step_s": analytic / topo.peak_flops_per_chip,
      "compile_s": compile_s,
  }
  if check_fit and not report["fits"]:
    raise DoesNotFitError(
        f"{topo.name}: the {objective} step needs {total / 2**30:.1f} GiB per chip, more than the "
        f"{topo.hbm_bytes / 2**30:g} GiB of HBM: {_knobs(cfg, batch_per_chip)}", report)
  return report


def _param_bytes(abstract_params) -> int:
  return sum(math.prod(p.shape) * jnp.dtype(p.dtype).itemsize
             for p in jax.tree.leaves(abstract_params))


def format_table(reports: list[dict]) -> str:
  """One row per compiled step: per-chip memory in GiB, FLOPs in TFLOP per chip per step; a ratio
  marked * counts the scanned layer loop once, one marked ^ leaves out attention (a kernel)."""
  gib = lambda b: f"{b / 2**30:.2f}"
  header = ("topology", "objective", "mesh", "batch/chip", "args GiB", "temp GiB", "total GiB",
            "HBM GiB", "fits", "compiler TF", "analytic TF", "ratio", "compile s")
  rows = [header]
  for r in reports:
    m = r["memory_per_chip"]
    mesh = "x".join(f"{k}{v}" for k, v in r["mesh"].items() if v > 1) or "1"
    ratio = r["compiler_over_analytic"]
    rows.append((r["topology"], r["objective"], mesh, f"{r['batch_per_chip']:g}",
                 gib(m["arguments"]), gib(m["temporaries"]), gib(m["total"]),
                 gib(r["hbm_per_chip"]), "yes" if r["fits"] else "NO",
                 f"{r['compiler_flops_per_chip'] / 1e12:.3g}",
                 f"{r['analytic_flops_per_chip'] / 1e12:.3g}",
                 "-" if ratio is None else
                 f"{ratio:.2f}{'*' if r['layer_loop_counted_once'] else ''}"
                 f"{'^' if r.get('attention_kernel') else ''}",
                 f"{r['compile_s']:.1f}"))
  widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
  return "\n".join("  ".join(str(c).rjust(w) for c, w in zip(row, widths)) for row in rows)
