"""Learning-rate schedules, the weight-decay mask, and FLOPs/MFU accounting."""
import ml_collections
import numpy as np
import pytest

import dlmscale
from configs.models import PAPER_1B
from dlmscale import flops, optim


def _tc(schedule, **kw):
  base = dict(lr=1.0, min_lr=0.1, schedule=schedule, warmup_steps=10, decay_fraction=0.2)
  return ml_collections.ConfigDict(dict(base, **kw))


def test_wsd_warms_up_holds_then_decays_linearly_to_min_lr():
  sched = optim.make_schedule(_tc("wsd"), 100)
  lr = np.array([float(sched(s)) for s in range(101)])
  assert lr[0] == 0.0 and lr[5] == pytest.approx(0.5)
  np.testing.assert_allclose(lr[10:80], 1.0)  # stable until the last 20% of steps
  assert lr[90] == pytest.approx(0.55) and lr[100] == pytest.approx(0.1)
  assert np.all(np.diff(lr[80:]) < 0)


def test_cosine_and_constant_schedules():
  cos = optim.make_schedule(_tc("cosine"), 110)
  assert float(cos(10)) == pytest.approx(1.0)
  assert float(cos(60)) == pytest.approx(0.55, abs=1e-6)  # halfway: mean of peak and floor
  assert float(cos(110)) == pytest.approx(0.1)
  const = optim.make_schedule(_tc("constant"), 50)
  assert [float(const(s)) for s in (10, 30, 50)] == [1.0, 1.0, 1.0]


def test_weight_decay_skips_norm_scales_but_not_stacked_matrices():
  model = dlmscale.build_model(dlmscale.ModelConfig(
      vocab_size=64, num_layers=2, d_model=32, num_heads=4, d_ff=64))
  mask = optim.decay_mask(model.logical_axes)
  assert mask["embed"] and mask["blocks"]["mlp"]["w_up"] and mask["blocks"]["attn"]["wq"]
  assert not mask["final_norm"]["scale"]
  assert not mask["blocks"]["attn_norm"]["scale"]  # ('layers', 'norm'): a stacked vector
  assert not mask["blocks"]["attn"]["q_norm"]["scale"]


def test_flops_per_token_matches_the_6n_plus_attention_count():
  cfg = dlmscale.ModelConfig(**PAPER_1B)
  counts = dlmscale.build_model(cfg).param_counts()
  norms = cfg.num_layers * (2 * cfg.d_model + 2 * cfg.head_dim) + cfg.d_model
  # Matmul params: the non-embedding ones without norm scales, plus the (tied) output head.
  assert flops.matmul_params(cfg) == counts["non_embedding"] - norms + cfg.d_model * cfg.vocab_size
  attention = 12 * 26 * 1792 * 2048
  assert flops.train_flops_per_token(cfg, 2048) == 6 * flops.matmul_params(cfg) + attention


def test_mfu_needs_a_peak_and_scales_with_throughput():
  assert flops.mfu(1e6, 1e9, None) is None
  one = flops.mfu(1e6, 1e9, 1e15)
  assert one == pytest.approx(1e15 / (1e15 * flops.jax.device_count()))
  assert flops.mfu(2e6, 1e9, 1e15) == pytest.approx(2 * one)
  assert flops.peak_flops_per_device(123.0) == 123.0
  assert flops.peak_flops_per_device() is None  # CPU: no known peak


def _moe_cfg(**kw):
  base = dict(vocab_size=512, num_layers=4, d_model=64, num_heads=4, d_ff=192, num_experts=1,
              experts_per_token=1)
  return dlmscale.ModelConfig(**dict(base, **kw))


def test_moe_flops_count_active_experts_and_the_router():
  dense = dlmscale.ModelConfig(vocab_size=512, num_layers=4, d_model=64, num_heads=4, d_ff=192)
  router = 4 * 64  # one expert: a [D, 1] router per layer
  # One expert, top-1: the dense SwiGLU's matmuls plus the router's.
  assert flops.matmul_params(_moe_cfg()) == flops.matmul_params(dense) + router
  assert (flops.train_flops_per_token(_moe_cfg(), 128)
          == flops.train_flops_per_token(dense, 128) + 6 * router)
  # E experts top-k: the expert part scales with k, not with E (idle experts cost nothing).
  expert_part = 4 * 3 * 64 * 192
  for e, k in ((8, 1), (8, 2), (16, 4)):
    got = flops.matmul_params(_moe_cfg(num_experts=e, experts_per_token=k))
    assert got == flops.matmul_params(dense) - expert_part + k * expert_part + 4 * 64 * e
  # Interleaved (every 2nd layer MoE), narrow experts and a shared expert.
  cfg = _moe_cfg(num_experts=8, experts_per_token=2, moe_every=2, moe_d_ff=32,
                 num_shared_experts=1)
  moe_layer = (2 + 1) * 3 * 64 * 32 + 64 * 8
  assert flops.matmul_params(cfg) == flops.matmul_params(dense) - 2 * 3 * 64 * 192 + 2 * moe_layer


@pytest.mark.parametrize("kw", [dict(num_experts=8, experts_per_token=2),
                                dict(num_experts=8, experts_per_token=3, moe_every=2,
                                     moe_d_ff=48, num_shared_experts=1)])
def test_moe_flops_agree_with_active_param_count(kw):
  cfg = _moe_cfg(**kw)
  counts = dlmscale.build_model(cfg).param_counts()
  norms = cfg.num_layers * (2 * cfg.d_model + 2 * cfg.head_dim) + cfg.d_model
  # Tied: the embedding counted once in `active` is the head's matmul.
  assert flops.matmul_params(cfg) == counts["active"] - norms
