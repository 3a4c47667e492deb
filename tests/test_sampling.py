"""Generation: the KV cache against the full forward pass, AR sampling filters and stops, DLM
iterative unmasking (prompt kept, no masks left, block order, confidence order, padding
invariance), text-level generation and the sample command. Tiny fp32 models with random params."""
import contextlib
import dataclasses
import io
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlmscale import parallel, train
from dlmscale.checkpoint import Checkpointer
from dlmscale.data.tokenizers.byte import ByteTokenizer
from dlmscale.errors import ConfigError
from dlmscale.evaluation.loaded import LoadedModel
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig
from dlmscale.modes import sample as sample_command
from dlmscale.sampling import (ar_generate, dlm_generate, generate_text, left_pad,
                               sample_tokens, unmasking_schedule)
from _shared import random_params, tiny_config

V, EOD, MASK = 64, 63, 62
BASE = dict(vocab_size=V, num_layers=2, d_model=32, num_heads=4, d_ff=64, dtype="float32")
# Together these cover dense and MoE, full and grouped KV heads, scanned and unscanned stacks
# (scanned MoE periods of moe_every layers included).
CONFIGS = {
    "dense_scanned": dict(),
    "gqa_moe_unscanned": dict(num_kv_heads=2, num_experts=4, moe_every=2, scan_layers=False),
    "gqa_moe_scanned_periods": dict(num_layers=4, num_kv_heads=1, num_experts=4, moe_every=2,
                                    num_shared_experts=1),
}
PROMPTS = [[5, 9, 11, 3, 17, 2], [40, 8], [21, 30, 7, 7]]


def make(seed=0, **kw):
  model = build_model(ModelConfig(**dict(BASE, **kw)))
  return model, random_params(model, seed=seed, std=0.3)


def reference_greedy(fwd, params, prompts, n):
  """Greedy tokens without a cache: the full causal forward at every step, rows right-padded
  (causal attention never sees past a row's end). Returns the n new tokens of each row."""
  seq = np.zeros((len(prompts), max(map(len, prompts)) + n), np.int32)
  for row, prompt in zip(seq, prompts):
    row[:len(prompt)] = prompt
  for step in range(n):
    logits = np.asarray(fwd(params, seq))
    for b, prompt in enumerate(prompts):
      seq[b, len(prompt) + step] = logits[b, len(prompt) + step - 1].argmax()
  return np.stack([row[len(p):len(p) + n] for row, p in zip(seq, prompts)])


def cached_logits(model):
  """jitted (params, left-padded prompts, start_B, new tokens [B, T]) -> (prefill logits,
  logits after each new token, fed one at a time by decode_step)."""
  def run(params, prompt_BxP, start_B, new_BxT):
    max_len = prompt_BxP.shape[1] + new_BxT.shape[1]
    logits_BxPxV, cache = model.prefill(params, prompt_BxP, max_len=max_len, start_B=start_B)
    step = lambda cache, token_B: model.decode_step(params, cache, token_B)[::-1]
    _, logits_TxBxV = jax.lax.scan(step, cache, new_BxT.T)
    return logits_BxPxV, logits_TxBxV.transpose(1, 0, 2)
  return jax.jit(run)


# ---- KV cache ----------------------------------------------------------------------------------

def greedy(model, params, n=8):
  """ar_generate's greedy answers to PROMPTS (left-padded); no row stops (eod is out of range)."""
  tokens, lengths = left_pad(PROMPTS, pad_id=0)
  return ar_generate(model, params, tokens, lengths, max_new_tokens=n, key=jax.random.key(0),
                     eod_id=V + 1)


@pytest.mark.parametrize("name", CONFIGS)
def test_cached_greedy_generation_equals_the_full_forward_token_for_token(name):
  """For a batch of 3 prompt lengths (left-padded): ar_generate's greedy tokens equal re-running
  the full forward every step on each prompt alone."""
  model, params = make(**CONFIGS[name])
  fwd = jax.jit(lambda p, t: model.apply(p, t, causal=True)[0])
  want = reference_greedy(fwd, params, PROMPTS, 8)
  out = greedy(model, params)
  np.testing.assert_array_equal(out.tokens, want)
  np.testing.assert_array_equal(out.lengths, [8] * len(PROMPTS))


@pytest.mark.parametrize("kw, tol", [(dict(), 1e-5), (dict(dtype="bfloat16"), 2e-2),
                                     (dict(num_experts=4, moe_dispatch="capacity"), 1e-5),
                                     (dict(scan_layers=False, num_kv_heads=2), 1e-5)])
def test_prefill_and_decode_logits_equal_the_full_forward(kw, tol):
  """Prefill then one decode_step per token reproduce the causal forward's logits, rows
  left-padded (fp32 and bf16, dense and MoE); bf16 within bf16 rounding. Capacity-dispatch MoE
  decodes dropless (a decode step cannot reproduce a whole sequence's drops), so it matches the
  dropless network."""
  model, params = make(**kw)
  reference = build_model(ModelConfig(**dict(BASE, **dict(kw, moe_dispatch="dropless"))))
  seq = np.random.default_rng(1).integers(0, V, (len(PROMPTS), 9)).astype(np.int32)
  full = jax.jit(lambda p, t: reference.apply(p, t, causal=True)[0])(params, seq)
  firsts = [len(p) for p in PROMPTS]  # row b: prompt seq[b, :firsts[b]], then 3 decode steps
  tokens, lengths = left_pad([row[:f] for row, f in zip(seq, firsts)], pad_id=0)
  new = np.stack([row[f:f + 3] for row, f in zip(seq, firsts)])
  prefill, decoded = cached_logits(model)(params, tokens, tokens.shape[1] - lengths, new)
  for b, f in enumerate(firsts):
    np.testing.assert_allclose(prefill[b, tokens.shape[1] - f:], full[b, :f], atol=tol, rtol=tol)
    np.testing.assert_allclose(decoded[b], full[b, f:f + 3], atol=tol, rtol=tol)


# ---- token filters -----------------------------------------------------------------------------

LOGITS = jnp.log(jnp.array([[0.05, 0.5, 0.15, 0.3]]))  # ids by probability: 1, 3, 2, 0


def draw_counts(n=4000, **kw):
  keys = jax.random.split(jax.random.key(0), n)
  ids = jax.jit(jax.vmap(lambda k: sample_tokens(LOGITS, k, **kw)[0]))(keys)
  return np.bincount(np.asarray(ids), minlength=4) / n


def test_top_k_one_and_tiny_top_p_equal_greedy():
  logits = jax.random.normal(jax.random.key(3), (16, V)) * 2
  argmax = np.asarray(jnp.argmax(logits, -1))
  np.testing.assert_array_equal(sample_tokens(logits, None, temperature=0.0), argmax)
  keys = jax.random.split(jax.random.key(0), 8)
  for kw in (dict(top_k=1), dict(top_p=1e-6)):
    draw = jax.jit(jax.vmap(lambda k: sample_tokens(logits, k, temperature=1.5, **kw)))
    np.testing.assert_array_equal(draw(keys), np.broadcast_to(argmax, (8, 16)))


@pytest.mark.parametrize("kw, support", [
    (dict(top_k=2), [1, 3]), (dict(top_p=0.75), [1, 3]), (dict(top_p=0.85), [1, 3, 2]),
    (dict(top_k=2, top_p=0.85), [1, 3]), (dict(), [1, 3, 2, 0])])
def test_filters_keep_exactly_their_support_with_renormalised_probabilities(kw, support):
  """top_k / top_p (smallest set reaching top_p) draw only from their set, in proportion."""
  freq = draw_counts(temperature=1.0, **kw)
  probs = np.array([0.05, 0.5, 0.15, 0.3])
  want = np.zeros(4)
  want[support] = probs[support] / probs[support].sum()
  assert set(np.flatnonzero(freq)) == set(support)
  np.testing.assert_allclose(freq, want, atol=0.03)


def test_temperature_sharpens_and_flattens():
  probs = np.array([0.05, 0.5, 0.15, 0.3])
  for t in (0.5, 2.0):
    want = probs ** (1 / t) / (probs ** (1 / t)).sum()
    np.testing.assert_allclose(draw_counts(temperature=t), want, atol=0.03)


# ---- AR generation -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def dense():
  return make(**CONFIGS["dense_scanned"])


def test_temperature_sampling_is_seeded(dense):
  tokens, lengths = left_pad(PROMPTS, pad_id=0)
  run = lambda seed: ar_generate(*dense, tokens, lengths, max_new_tokens=8, eod_id=V + 1,
                                 key=jax.random.key(seed), temperature=1.0).tokens
  np.testing.assert_array_equal(run(0), run(0))
  assert (np.asarray(run(0)) != np.asarray(run(1))).any()


def test_eod_and_stop_ids_stop_rows_and_pad_the_rest(dense):
  """With eod = an id row 0 produces and a stop id row 2 produces, each row ends at its first
  eod-or-stop id (kept), pad ids follow, and the tokens before it are unchanged."""
  free = np.asarray(greedy(*dense).tokens)
  at0, eod = next((i, int(t)) for i, t in enumerate(free[0]) if i and t not in free[0][:i])
  stop = next(int(t) for t in free[2] if t != eod)
  assert stop not in free[0][:at0]  # row 0 ends at eod, row 2 at the stop id
  tokens, lengths = left_pad(PROMPTS, pad_id=0)
  out = ar_generate(*dense, tokens, lengths, max_new_tokens=8, key=jax.random.key(0),
                    eod_id=eod, stop_ids=(stop,), pad_id=0)
  got = np.asarray(out.tokens)
  assert got[0, out.lengths[0]] == eod and got[2, out.lengths[2]] == stop
  for row in range(len(PROMPTS)):
    ends = [i for i, t in enumerate(free[row]) if t in (eod, stop)]
    end = ends[0] if ends else 8
    assert int(out.lengths[row]) == end
    np.testing.assert_array_equal(got[row, :end + 1], free[row, :end + 1])
    np.testing.assert_array_equal(got[row, end + 1:], 0)


def test_ar_bad_inputs_are_config_errors(dense):
  tokens, lengths = left_pad(PROMPTS, pad_id=0)
  for kw in (dict(temperature=-1.0), dict(top_k=-1), dict(top_p=0.0), dict(top_p=1.5),
             dict(max_new_tokens=0)):
    with pytest.raises(ConfigError):
      ar_generate(*dense, tokens, lengths, **dict(dict(max_new_tokens=4, key=jax.random.key(0),
                                                       eod_id=EOD), **kw))
  with pytest.raises(ConfigError, match="condition on"):
    ar_generate(*dense, tokens, [6, 0, 4], max_new_tokens=4, key=jax.random.key(0), eod_id=EOD)


# ---- DLM generation ----------------------------------------------------------------------------

def test_unmasking_schedule_splits_steps_over_blocks_and_tokens_over_steps():
  commits, blocks = unmasking_schedule(10, steps=4, block_length=5)
  np.testing.assert_array_equal(commits, [3, 2, 3, 2])
  np.testing.assert_array_equal(blocks, [0, 0, 1, 1])
  commits, blocks = unmasking_schedule(6)  # defaults: one block, one token per step
  np.testing.assert_array_equal(commits, [1] * 6)
  np.testing.assert_array_equal(blocks, [0] * 6)
  for args, match in [((10, 3, 5), "multiple of the 2 blocks"), ((10, 4, 3), "block_length"),
                      ((4, 8, 0), "at most"), ((0, 0, 0), "gen_length")]:
    with pytest.raises(ConfigError, match=match):
      unmasking_schedule(*args)


DLM_PROMPTS = [[5, 9, 11, 3, 17], [40, 8]]
GEN, STEPS, BLOCK = 8, 4, 4


def dlm_run(model, params, prompts=DLM_PROMPTS, seed=0, **kw):
  tokens, lengths = left_pad(prompts, pad_id=EOD)
  kw = dict(dict(gen_length=GEN, steps=STEPS, block_length=BLOCK, mask_id=MASK, eod_id=EOD), **kw)
  return tokens, dlm_generate(model, params, tokens, lengths, key=jax.random.key(seed), **kw)


@pytest.fixture(scope="module")
def greedy_dlm(dense):
  return dlm_run(*dense)


def test_dlm_keeps_the_prompt_and_leaves_no_mask(greedy_dlm):
  prompt, out = greedy_dlm
  np.testing.assert_array_equal(out.sequences[:, :prompt.shape[1]], prompt)
  assert out.sequences.shape == (2, prompt.shape[1] + GEN)
  assert not (np.asarray(out.sequences) == MASK).any()
  assert not (np.asarray(out.tokens) == MASK).any()


def test_dlm_greedy_low_confidence_is_deterministic(dense, greedy_dlm):
  again = dlm_run(*dense, seed=7)[1]
  for a, b in zip(greedy_dlm[1], again):
    np.testing.assert_array_equal(a, b)


def test_dlm_decodes_block_by_block_on_schedule(greedy_dlm):
  """Block j's tokens are all unmasked during block j's steps (block j+1 stays masked until
  then), exactly the scheduled number per step."""
  steps = np.asarray(greedy_dlm[1].commit_step)
  per_block = STEPS // (GEN // BLOCK)
  for row in steps:
    for j in range(GEN // BLOCK):
      block = row[j * BLOCK:(j + 1) * BLOCK]
      assert ((block >= j * per_block) & (block < (j + 1) * per_block)).all(), row
    np.testing.assert_array_equal(np.bincount(row, minlength=STEPS), [2] * STEPS)


def test_dlm_first_step_commits_the_most_confident_predictions(dense, greedy_dlm):
  """Step 0 unmasks, in each row, the 2 positions of block 0 whose argmax probability is highest
  (mask id excluded) under the forward pass of that row's prompt alone, with their argmax ids."""
  model, params = dense
  _, out = greedy_dlm
  for row, prompt in enumerate(DLM_PROMPTS):
    canvas = jnp.asarray([prompt + [MASK] * GEN])
    logits = jax.jit(lambda p, t: model.apply(p, t, causal=False)[0])(params, canvas)
    logits = logits[0, len(prompt):len(prompt) + BLOCK]
    probs = jax.nn.softmax(logits.at[:, MASK].set(-jnp.inf), -1)
    top2 = set(np.argsort(-np.asarray(probs.max(-1)))[:2])
    assert set(np.flatnonzero(np.asarray(out.commit_step[row]) == 0)) == top2
    for i in top2:
      assert int(out.sequences[row, 5 + i]) == int(jnp.argmax(probs[i]))


def test_dlm_rows_do_not_depend_on_their_batch_padding(dense, greedy_dlm):
  alone = dlm_run(*dense, prompts=DLM_PROMPTS[1:])[1]
  np.testing.assert_array_equal(alone.tokens[0], greedy_dlm[1].tokens[1])
  np.testing.assert_array_equal(alone.commit_step[0], greedy_dlm[1].commit_step[1])


def test_dlm_random_remasking_and_temperature_depend_on_the_seed(dense):
  runs = [dlm_run(*dense, seed=s, remasking="random", temperature=1.0, allow_eod=False)[1]
          for s in (0, 0, 1)]
  np.testing.assert_array_equal(runs[0].tokens, runs[1].tokens)
  np.testing.assert_array_equal(runs[0].commit_step, runs[1].commit_step)
  assert (np.asarray(runs[0].commit_step) != np.asarray(runs[2].commit_step)).any()
  assert (np.asarray(runs[0].tokens) != np.asarray(runs[2].tokens)).any()
  for out in runs:
    assert not np.isin(np.asarray(out.sequences[:, 5:]), [MASK, EOD]).any()
    np.testing.assert_array_equal(out.lengths, [GEN, GEN])


def test_dlm_output_is_cut_at_the_first_eod(dense, greedy_dlm):
  """With eod_id set to an id the greedy answer produces, the answer ends before its first
  occurrence and eod ids fill the rest."""
  free = np.asarray(greedy_dlm[1].tokens[0])
  eod = int(free[3])
  out = dlm_run(*dense, eod_id=eod)[1]
  first = list(free).index(eod)
  assert int(out.lengths[0]) == first
  np.testing.assert_array_equal(out.tokens[0, :first], free[:first])
  np.testing.assert_array_equal(out.tokens[0, first:], eod)


def test_dlm_bad_inputs_are_config_errors(dense):
  for kw, match in [(dict(remasking="entropy"), "remasking"), (dict(steps=3), "steps=3"),
                    (dict(block_length=3), "block_length"), (dict(temperature=-0.5), "temper")]:
    with pytest.raises(ConfigError, match=match):
      dlm_run(*dense, **kw)


# ---- text level --------------------------------------------------------------------------------

def loaded(kind, seq_len=48, seed=0):
  tok = ByteTokenizer()
  model, params = make(seed=seed, vocab_size=272)  # padded past the tokenizer's 258 ids
  rules = parallel.DEFAULT_RULES
  return LoadedModel(model=model, params=params, tokenizer=tok, kind=kind, objective=kind,
                     mesh=parallel.make_mesh({"data": -1, "fsdp": 1, "tensor": 1, "expert": 1}),
                     rules=tuple(rules), seq_len=seq_len, step=0, cfg=None)


def test_generate_text_ar_samples_stops_and_window():
  lm = loaded("ar")
  prompts = ["def f(x):", "abc"]
  greedy = generate_text(lm, prompts, max_new_tokens=12, num_samples=2)
  assert [len(c) for c in greedy] == [2, 2] and greedy[0][0] == greedy[0][1]
  sampled = generate_text(lm, prompts, max_new_tokens=12, num_samples=2, temperature=1.0, seed=3)
  assert sampled[0][0] != sampled[0][1]
  text = greedy[0][0]
  assert len(text) >= 6, text
  stop = text[4:6]
  cut = generate_text(lm, prompts, max_new_tokens=12, num_samples=2, stop=["\x00\x01", stop])
  assert cut[0][0] == text[:text.find(stop)]
  # 9 rows in batches of 8 (the 8 fake devices): the rows are regrouped by prompt in order.
  chunked = generate_text(lm, prompts + prompts[:1], max_new_tokens=12, num_samples=3,
                          batch_size=8)
  assert chunked == [[greedy[0][0]] * 3, [greedy[1][0]] * 3, [greedy[0][0]] * 3]
  with pytest.raises(ConfigError, match="seq_len=48"):
    generate_text(lm, ["x" * 40], max_new_tokens=8)  # 1 eod + 40 + 8 > 48
  with pytest.raises(ConfigError, match="top_p"):
    generate_text(lm, prompts, max_new_tokens=4, top_p=0.0)


def test_generate_text_dlm_answers_and_checks_settings():
  lm = loaded("dlm")
  out = generate_text(lm, ["print(", "x = 1"], max_new_tokens=8, steps=4, block_length=4,
                      num_samples=2, temperature=1.0, seed=1)
  assert [len(c) for c in out] == [2, 2] and out[0][0] != out[0][1]
  greedy = generate_text(lm, ["print("], max_new_tokens=8, steps=4, block_length=4)
  assert greedy == generate_text(lm, ["print("], max_new_tokens=8, steps=4, block_length=4,
                                 seed=5)
  with pytest.raises(ConfigError, match="multiple"):
    generate_text(lm, ["print("], max_new_tokens=8, steps=3, block_length=4)
  with pytest.raises(ConfigError, match="remasking"):
    generate_text(lm, ["print("], max_new_tokens=8, remasking="topk")
  # The fast options reach dlm_generate: threshold 1 with a cache refreshed every step is the
  # one-token-per-step sampler; bad ones fail before any work.
  one_per_step = generate_text(lm, ["print(", "x = 1"], max_new_tokens=8, block_length=4)
  assert one_per_step == generate_text(lm, ["print(", "x = 1"], max_new_tokens=8, block_length=4,
                                       threshold=1.0, cache="dual", refresh_every=1)
  with pytest.raises(ConfigError, match="unknown cache"):
    generate_text(lm, ["print("], max_new_tokens=8, cache="kv")


def test_sample_command_loads_each_checkpoint_and_prints_completions(tmp_path):
  """sample_command completes cfg.sample.prompts from the saved checkpoint of every objective,
  as generate_text does from the same parameters in memory. One checkpoint (random params,
  zero optimizer state) serves both objectives: they share the network."""
  from dlmscale import experiment  # noqa: PLC0415  (heavy: prepares the tiny corpus)
  cfg = tiny_config(**{"sample.prompts": ("def f(", "x ="), "sample.max_new_tokens": 6,
                       "sample.num_samples": 2, "sample.steps": 3, "sample.cache": "dual"})
  exp = experiment.build_experiment(cfg, "ar")
  abstract = jax.eval_shape(lambda: train.init_state(exp.model, exp.optimizer, 0))
  state = dict(jax.tree.map(lambda a: np.zeros(a.shape, a.dtype), abstract),
               params=random_params(exp.model, seed=4))
  checkpointer = Checkpointer(os.path.join(tmp_path, "ar", "checkpoints"), keep=1,
                              async_save=False)
  checkpointer.save(0, state, {})
  checkpointer.close()
  os.symlink(os.path.join(tmp_path, "ar"), os.path.join(tmp_path, "mdm"))
  lm = experiment.loaded_model(exp, state["params"])
  expected = {o: generate_text(dataclasses.replace(lm, kind=k), cfg.sample.prompts,
                               max_new_tokens=6, num_samples=2, steps=3, cache="dual")
              for o, k in (("ar", "ar"), ("mdm", "dlm"))}
  stdout = io.StringIO()
  with contextlib.redirect_stdout(stdout):
    records = sample_command(cfg, str(tmp_path))
  assert [(r["objective"], r["kind"], r["step"]) for r in records] == [("ar", "ar", 0),
                                                                       ("mdm", "dlm", 0)]
  for r in records:
    assert [s["prompt"] for s in r["samples"]] == ["def f(", "x ="]
    assert [s["completions"] for s in r["samples"]] == expected[r["objective"]]
  text = stdout.getvalue()
  assert "[ar] ar checkpoint step 0" in text and "[mdm] dlm checkpoint step 0" in text
  assert f"def f({expected['mdm'][0][1]}" in text
