"""Fast DLM decoding (dlmscale.sampling.dlm_cache): confidence-threshold parallel unmasking and
the prefix / dual block caches, against the one-token-per-step sampler. Tiny fp32 models with
random params, greedy decoding."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmscale.errors import ConfigError
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig
from dlmscale.sampling import dlm_generate, left_pad
from _shared import random_params

V, EOD, MASK = 64, 63, 62
GEN, BLOCK = 12, 4
PROMPTS = [[5, 9, 11, 3, 17], [40, 8], [21, 30, 7]]


def make(**kw):
  cfg = dict(vocab_size=V, num_layers=2, d_model=32, num_heads=4, d_ff=64, dtype="float32")
  model = build_model(ModelConfig(**dict(cfg, **kw)))
  return model, random_params(model, seed=0, std=0.3)


@pytest.fixture(scope="module")
def dense():
  return make()


def run(model, params, prompts=PROMPTS, **kw):
  # One prompt width for every call: a row alone compiles the batch's program once.
  tokens, lengths = left_pad(prompts, pad_id=EOD, width=max(map(len, PROMPTS)))
  kw = dict(dict(gen_length=GEN, block_length=BLOCK, mask_id=MASK, eod_id=EOD), **kw)
  return dlm_generate(model, params, tokens, lengths, key=jax.random.key(0), **kw)


def assert_same(a, b):
  np.testing.assert_array_equal(a.sequences, b.sequences)
  np.testing.assert_array_equal(a.commit_step, b.commit_step)
  assert int(a.passes) == int(b.passes)


@pytest.mark.parametrize("block_length", [BLOCK, 0])
def test_threshold_one_reproduces_the_one_token_per_step_sampler(dense, block_length):
  """No confidence exceeds 1, so each step commits exactly the most confident id: the default
  sampler with steps = gen_length (one id per step), same ids, same order, GEN passes."""
  want = run(*dense, block_length=block_length)
  assert int(want.passes) == GEN
  assert_same(run(*dense, block_length=block_length, threshold=1.0), want)


@pytest.mark.parametrize("cache", ["prefix", "dual"])
@pytest.mark.parametrize("mode", [dict(steps=6), dict(threshold=0.2)])
def test_a_cache_refreshed_every_step_is_the_uncached_sampler(dense, cache, mode):
  """refresh_every=1: every step is a full pass, so the cached sampler is the uncached one
  exactly (on the fixed schedule and with a threshold)."""
  want = run(*dense, **mode)
  assert_same(run(*dense, cache=cache, refresh_every=1, **mode), want)


def test_threshold_commits_every_confident_id_and_at_least_one_per_step(dense):
  """Step 0 commits exactly the block-0 positions whose argmax probability (mask id banned)
  exceeds the threshold under the prompt's forward pass, or the single most confident one when
  none does; every later step commits >= 1 id; a near-zero threshold fills a block per pass."""
  model, params = dense
  fwd = jax.jit(lambda p, t: model.apply(p, t, causal=False)[0])
  for threshold in (0.3, 0.9):
    for prompt in PROMPTS:
      out = run(model, params, [prompt], threshold=threshold)
      logits = fwd(params, jnp.asarray([prompt + [MASK] * GEN]))[0, len(prompt):][:BLOCK]
      conf = np.asarray(jax.nn.softmax(logits.at[:, MASK].set(-jnp.inf), -1).max(-1))
      want = set(np.flatnonzero(conf > threshold)) or {int(conf.argmax())}
      steps = np.asarray(out.commit_step[0])
      assert set(np.flatnonzero(steps == 0)) == want
      assert (np.bincount(steps, minlength=int(out.passes)) >= 1).all()
      assert GEN // BLOCK <= int(out.passes) <= GEN
  for cache in ("none", "dual"):
    out = run(model, params, threshold=1e-9, cache=cache)
    assert int(out.passes) == GEN // BLOCK
    assert not (np.asarray(out.sequences) == MASK).any()


@pytest.mark.parametrize("kw", [dict(threshold=0.3), dict(threshold=0.3, cache="prefix"),
                                dict(threshold=0.3, cache="dual"), dict(steps=6, cache="dual")])
def test_batched_rows_equal_each_row_alone(dense, kw):
  """Rows of different prompt lengths in one batch decode as each does alone (rows run in
  lockstep, so only the step numbers of a row that waited may differ)."""
  batched = run(*dense, **kw)
  for b, prompt in enumerate(PROMPTS):
    alone = run(*dense, [prompt], **kw)
    np.testing.assert_array_equal(batched.tokens[b], alone.tokens[0])
    assert not (np.asarray(alone.sequences) == MASK).any()


@pytest.mark.parametrize("kw", [dict(), dict(num_kv_heads=2, scan_layers=False)])
def test_fresh_block_cache_reproduces_the_full_pass(kw):
  """Right after a refresh the cache is exact: a dual-cache pass over one block and a
  prefix-cache pass over everything from the block on give the full pass's logits there."""
  model, params = make(**kw)
  b, t, first = 2, 16, np.array([5, 2])
  visible = first + 9  # row b's canvas: positions [0, visible_b), padding after
  canvas = np.random.default_rng(0).integers(0, V, (b, t)).astype(np.int32)
  full = jax.jit(lambda p, x: model.apply(p, x, causal=False, lengths_B=visible)[0])(params, canvas)
  attend = jax.jit(model.attend)
  slots = jnp.arange(t)
  allowed = jnp.broadcast_to(slots[None, None] < visible[:, None, None], (b, t, t))
  _, kv = attend(params, canvas, positions_BxT=jnp.broadcast_to(slots, (b, t)),
                       allowed_BxTxT=allowed)
  start = first + 4
  for width, outside in [(3, lambda s: (s < start[:, None]) | ((s >= start[:, None] + 3)
                                                                & (s < visible[:, None]))),
                         (9 - 4, lambda s: s < start[:, None])]:
    window = start[:, None] + jnp.arange(width)
    logits, _ = attend(
        params, jnp.take_along_axis(canvas, window, 1), positions_BxT=window,
        allowed_BxTxT=jnp.ones((b, width, width), bool), kv=kv,
        cache_allowed_BxTxS=jnp.broadcast_to(outside(slots[None])[:, None], (b, width, t)))
    want = jnp.take_along_axis(full, window[..., None], 1)
    np.testing.assert_allclose(logits, want, atol=1e-5, rtol=1e-5)


def test_fast_options_bad_inputs_are_config_errors(dense):
  for kw, match in [(dict(cache="kv"), "unknown cache"), (dict(threshold=-0.1), "threshold"),
                    (dict(threshold=0.5, steps=6), "leave steps=0"),
                    (dict(threshold=0.5, remasking="random"), "low_confidence"),
                    (dict(cache="dual", refresh_every=-1), "refresh_every")]:
    with pytest.raises(ConfigError, match=match):
      run(*dense, **kw)
