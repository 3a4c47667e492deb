"""Compile mode: the sharded train step compiled by libtpu for a TPU topology on this CPU host."""
import json
import os
import subprocess
import sys

import pytest

from _shared import cli_env, tiny_config
from dlmscale import compile as compile_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_libtpu = pytest.mark.skipif(not compile_lib.libtpu_available(),
                                  reason="libtpu not installed (pip install 'dlmscale[tpu]')")


@needs_libtpu
def test_tiny_fsdp_step_compiles_for_v5p_8_with_sensible_memory_and_flops():
  # Unrolled layers: XLA's cost analysis would count a scanned layer loop's body once.
  cfg = tiny_config(**{"mesh.data": 1, "mesh.fsdp": -1, "model.scan_layers": False})
  r = compile_lib.compile_for_topology(cfg, "mdm", "v5p-8")
  assert (r["chips"], r["device_kind"], r["mesh"]["fsdp"]) == (4, "TPU v5", 4)
  mem = r["memory_per_chip"]
  # fp32 params plus two Adam moments, sharded 4 ways, are the step's arguments.
  assert mem["arguments"] >= 3 * r["param_bytes"] / 4
  assert mem["total"] > r["param_bytes"] / 4 and mem["temporaries"] > 0
  assert r["fits"] and 0 < r["hbm_fraction"] < 0.01
  assert not r["layer_loop_counted_once"]
  assert 0.8 < r["compiler_over_analytic"] < 1.5, r["compiler_over_analytic"]
  assert r["compile_s"] > 0 and r["batch_per_chip"] == 4


@needs_libtpu
def test_fsdp_keeps_activations_batch_sharded():
  # Same 16 sequences per chip either way; fsdp only shards the parameters. Without activation
  # sharding constraints the compiler kept the residual stream sharded on `embed` and needed 4x
  # the temporaries of data parallelism (607 vs 150 MiB per chip here).
  temps = {}
  for axis in ("data", "fsdp"):
    other = "fsdp" if axis == "data" else "data"
    cfg = tiny_config(**{f"mesh.{axis}": -1, f"mesh.{other}": 1, "train.global_batch": 64,
                         "data.seq_len": 256})
    temps[axis] = compile_lib.compile_for_topology(cfg, "ar", "v5p-8")["memory_per_chip"][
        "temporaries"]
  assert temps["fsdp"] < 1.5 * temps["data"], temps


@needs_libtpu
def test_a_batch_that_cannot_fit_names_the_knobs():
  cfg = tiny_config(**{"train.global_batch": 2**22})
  with pytest.raises(compile_lib.DoesNotFitError) as e:
    compile_lib.compile_for_topology(cfg, "ar", "v5e-4")
  message = str(e.value)
  assert "\n" not in message and "v5e-4" in message and "exceeds available HBM" in message
  for knob in ("train.global_batch", "train.grad_accum", "model.remat", "mesh.fsdp"):
    assert knob in message, message


def test_unknown_topology_lists_the_known_names():
  with pytest.raises(compile_lib.CompileError, match=r"unknown topology 'v9-8': use one of "
                     r"v4-8, .*v5p-64.*v5litepod-16.*v6e-8"):
    compile_lib.compile_for_topology(tiny_config(), "ar", "v9-8")


def test_missing_libtpu_names_the_install_command(monkeypatch):
  monkeypatch.setattr(compile_lib, "libtpu_available", lambda: False)
  with pytest.raises(compile_lib.CompileError, match=r"pip install 'dlmscale\[tpu\]'"):
    compile_lib.compile_for_topology(tiny_config(), "ar", "v5p-8")


def test_topology_table_counts_chips_like_cloud_tpu_names():
  t = compile_lib.TOPOLOGIES
  assert (t["v4-8"].chips, t["v5p-64"].chips, t["v5e-8"].chips, t["v6e-8"].chips) == (4, 32, 8, 8)
  assert t["v5p-64"].libtpu_name == "v5p:2x4x4" and t["v5litepod-16"].libtpu_name == "v5e:4x4"
  assert t["v5p-8"].peak_flops_per_chip == 459e12


def _cli(tmp_path_factory, *args):
  return subprocess.run([sys.executable, "-m", "dlmscale.main", "--mode=compile", *args],
                        cwd=ROOT, env=cli_env(tmp_path_factory), capture_output=True, text=True,
                        timeout=300)


@needs_libtpu
def test_cli_prints_a_table_and_json(tmp_path_factory):
  proc = _cli(tmp_path_factory, "--config=tests/configs/tiny.py", "--config.objectives=ar",
              "--topology=v4-8")
  assert proc.returncode == 0, proc.stderr[-3000:]
  table, _, payload = proc.stdout.partition("\n[")
  assert table.splitlines()[0].split()[:2] == ["topology", "objective"]
  assert "v4-8" in table and " yes " in table
  (report,) = json.loads("[" + payload)
  assert (report["topology"], report["chips"], report["fits"]) == ("v4-8", 4, True)
  assert report["layer_loop_counted_once"] and "*" in table  # tiny scans its 2 layers
  assert "Traceback" not in proc.stderr and "WARNING" not in proc.stderr, proc.stderr[-3000:]


def test_cli_bad_topology_is_a_one_line_error(tmp_path_factory):
  for args, expected in ((["--topology=v5p-7"], "unknown topology 'v5p-7'"),
                         ([], "--topology is required")):
    proc = _cli(tmp_path_factory, "--config=tests/configs/tiny.py", *args)
    assert proc.returncode == 2, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
