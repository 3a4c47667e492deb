"""The sparse study's experiment configs: they validate and build abstractly with the documented
parameter counts (nothing of billions of parameters is allocated)."""
import importlib.util
import os

import jax
import pytest

from dlmscale import config as config_lib
from dlmscale import flops, parallel
from dlmscale.models.model import build_model

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2_PLUS_MASK = 50258  # the paper's tokenizer; the configs pad the vocabulary to 50269

# name: (total, active, routed-expert, non-embedding) as documented in each file's docstring.
COUNTS = {
    "dense_1b": (1_086_134_272, 1_086_134_272, 0, 996_052_224),
    "moe_1b": (8_372_377_600, 1_090_607_104, 7_943_749_632, 8_282_295_552),
    "dense_8b": (7_896_483_328, 7_896_483_328, 0, 7_690_581_504),
}


def _load(name):
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "experiments",
                                                                   f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_paper_config_validates_and_has_the_documented_counts(name):
  module = _load(name)
  cfg = module.get_config()
  config_lib.validate(cfg)
  model = build_model(config_lib.model_config(cfg, GPT2_PLUS_MASK))
  assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(model.abstract_params))
  counts = model.param_counts()
  total, active, expert, non_embedding = COUNTS[name]
  assert counts["total"] == total and counts["non_embedding"] == non_embedding
  assert counts.get("active", counts["total"]) == active
  assert counts.get("expert", 0) == expert
  for figure in (total, active, expert):  # the docstring states the same numbers
    assert f"{figure:,}" in module.__doc__ or not figure
  assert f"--config=experiments/{name}.py" in module.__doc__
  # The paper's recipe.
  batch = 1024 if name == "dense_8b" else 256
  assert cfg.data.seq_len == 2048 and cfg.train.global_batch == batch
  assert cfg.model.dtype == "bfloat16" and cfg.model.remat == "full"
  assert (cfg.train.lr, cfg.train.min_lr, cfg.train.warmup_steps) == (2e-4, 2e-5, 2000)
  assert cfg.data.total_tokens // cfg.data.unique_tokens == 96
  # Either objective alone, as --config.objectives=mdm sets it.
  assert config_lib.objective_names(cfg) == ("ar", "mdm")
  cfg.objectives = ("mdm",)  # what the flag gives
  config_lib.validate(cfg)
  assert config_lib.objective_names(cfg) == ("mdm",)


@pytest.mark.parametrize("name,chips", [("dense_1b", 32), ("moe_1b", 32), ("dense_8b", 64)])
def test_default_mesh_fills_a_v5p_slice_and_splits_the_batch(name, chips):
  cfg = _load(name).get_config()
  shape = parallel.resolve_mesh_shape(dict(cfg.mesh), chips)
  # The 1B's fit data-parallel (fsdp's temporaries do not fit, BENCHMARKS.md); the 8B needs fsdp.
  assert shape["fsdp" if name == "dense_8b" else "data"] == (chips if name != "moe_1b" else 4)
  if name == "moe_1b":
    assert shape["expert"] == 8 and cfg.model.num_experts % shape["expert"] == 0
    assert cfg.model.moe_dispatch == "dropless_gather"  # no dropped tokens, fits (BENCHMARKS.md)
  batch_ways = shape["data"] * shape["fsdp"] * shape["expert"]
  assert cfg.train.global_batch % batch_ways == 0


def test_8b1a_has_the_compute_of_the_dense_1b_plus_its_routers():
  dense = config_lib.model_config(_load("dense_1b").get_config(), GPT2_PLUS_MASK)
  moe = config_lib.model_config(_load("moe_1b").get_config(), GPT2_PLUS_MASK)
  router = moe.num_layers * moe.d_model * moe.num_experts
  assert flops.matmul_params(moe) == flops.matmul_params(dense) + router
