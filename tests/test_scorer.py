"""Scorer: lm-eval-compatible tokenisation, batching, order, devices, rolling windows, errors."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import dlmscale
from dlmscale import parallel
from dlmscale.data.tokenizers.byte import ByteTokenizer
from dlmscale.errors import ConfigError
from dlmscale.evaluation.loaded import LoadedModel
from dlmscale.evaluation.scorer import (LogLikelihood, Scorer, dlm_batching, encode_pair,
                                       padded_length, rolling_windows)
from tests._shared import random_params

SEQ_LEN = 16
RULES = tuple(dlmscale.default_config().rules)
TOK = ByteTokenizer()
REQUESTS = [("The cat ", "sat"), ("", "hello"), ("abc", "d"), ("x" * 40, "yz"),
            ("Question: 1+1=", " 2"), ("a", "")]


@pytest.fixture(scope="module")
def model_and_params():
  model = dlmscale.build_model(dlmscale.ModelConfig(
      vocab_size=264, num_layers=2, d_model=32, num_heads=4, d_ff=64, dtype="float32",
      tie_embeddings=False))
  return model, random_params(model, seed=2, std=0.3)


@pytest.fixture(scope="module")
def dlm_scorer(model_and_params):
  """A DLM scorer on 8 devices, shared so its compilations are reused."""
  return Scorer(_loaded(model_and_params, "dlm", 8), estimator="fixed_count", num_samples=8,
                batch_size=16)


def _loaded(model_and_params, kind, num_devices=8):
  model, params = model_and_params
  mesh = parallel.make_mesh({"data": -1}, jax.devices()[:num_devices])
  return LoadedModel(model=model, params=jax.device_put(params, parallel.replicated(mesh)),
                     tokenizer=TOK, kind=kind, objective=kind, mesh=mesh, rules=RULES,
                     seq_len=SEQ_LEN, step=0, cfg=None)


_FORWARD = {}


def _direct_ar(model, params, context, continuation):
  """Reference: sum of log-softmax of the continuation over one causal forward pass of the last
  seq_len + 1 tokens (right-padded to seq_len inputs: causal attention ignores the padding)."""
  row = (list(context) + list(continuation))[-(SEQ_LEN + 1):]
  if id(model) not in _FORWARD:
    _FORWARD[id(model)] = jax.jit(lambda p, x: model.apply(p, x[None], causal=True)[0][0])
  inputs = np.zeros(SEQ_LEN, np.int32)
  inputs[:len(row) - 1] = row[:-1]
  logits = _FORWARD[id(model)](params, jnp.asarray(inputs))
  logp = np.asarray(jax.nn.log_softmax(logits))
  start = len(row) - len(continuation)
  return float(sum(logp[j - 1, row[j]] for j in range(start, len(row))))


def test_encode_pair_follows_lm_eval():
  assert encode_pair(TOK, "The cat ", "sat") == (list(b"The cat"), list(b" sat"))
  assert encode_pair(TOK, "Q:\n", "A") == (list(b"Q:"), list(b"\nA"))
  assert encode_pair(TOK, "", "hi") == ([TOK.eod_id], list(b"hi"))


def test_rolling_windows_are_lm_eval_disjoint_windows():
  tokens = list(range(10))
  assert rolling_windows(tokens, 99, 4) == [([99], [0, 1, 2, 3]), ([3], [4, 5, 6, 7]),
                                            ([5, 6, 7], [8, 9])]
  assert rolling_windows(tokens[:4], 99, 4) == [([99], [0, 1, 2, 3])]
  assert rolling_windows([], 99, 4) == []


def test_ar_loglikelihood_equals_the_direct_sum_with_truncated_context(model_and_params):
  model, params = model_and_params
  results = Scorer(_loaded(model_and_params, "ar"), batch_size=4).loglikelihood(REQUESTS)
  for (context, continuation), result in zip(REQUESTS, results):
    ctx, cont = encode_pair(TOK, context, continuation)
    assert result.num_tokens == len(cont) and result.stderr == 0
    if cont:
      assert result.logprob == pytest.approx(_direct_ar(model, params, ctx, cont), rel=1e-5)
    else:
      assert result == LogLikelihood(0.0, 0.0, True, 0)


def test_ar_accepts_a_continuation_filling_the_window_and_rejects_a_longer_one(model_and_params):
  model, params = model_and_params
  scorer = Scorer(_loaded(model_and_params, "ar"), batch_size=8)
  cont = list(b"0123456789abcdef")  # 16 tokens: the input is [eod] + cont[:-1]
  [result] = scorer.loglikelihood_tokens([([TOK.eod_id, 7], cont)])
  # The context is cut to its last token, 7.
  assert result.logprob == pytest.approx(_direct_ar(model, params, [7], cont), rel=1e-5)
  with pytest.raises(ConfigError, match=r"request 1: continuation of 17 tokens .* at most 16"):
    scorer.loglikelihood_tokens([([1], [2]), ([1], cont + [3])])


def test_rolling_nll_equals_the_direct_ar_sum_over_windows(model_and_params):
  model, params = model_and_params
  scorer = Scorer(_loaded(model_and_params, "ar"), batch_size=8)
  short, long = "def f(x): x", "import os\n" * 5
  out = scorer.loglikelihood_rolling([short, long])
  assert out[0].logprob == pytest.approx(
      _direct_ar(model, params, [TOK.eod_id], list(TOK.encode(short))), rel=1e-5)
  windows = rolling_windows(TOK.encode(long), TOK.eod_id, SEQ_LEN)
  assert len(windows) == 4
  expected = sum(_direct_ar(model, params, c, t) for c, t in windows)
  assert out[1].logprob == pytest.approx(expected, rel=1e-5)
  assert out[1].num_tokens == len(long) and out[1].stderr == 0


def test_dlm_results_do_not_depend_on_order_batching_or_device_count(model_and_params,
                                                                     dlm_scorer):
  base = dlm_scorer.loglikelihood(REQUESTS)
  reversed_out = dlm_scorer.loglikelihood(REQUESTS[::-1])[::-1]
  one = Scorer(_loaded(model_and_params, "dlm", 1), estimator="fixed_count", num_samples=8,
               batch_size=64).loglikelihood(REQUESTS)  # 1 device, 8 samples per pass
  for other in (reversed_out, one):
    np.testing.assert_allclose([r.logprob for r in other], [r.logprob for r in base], rtol=1e-5)
    np.testing.assert_allclose([r.stderr for r in other], [r.stderr for r in base], rtol=1e-4,
                               atol=1e-6)
    assert [r.greedy for r in other] == [r.greedy for r in base]
  # Multi-token continuations are estimated (stderr > 0), one-token ones exact, empty ones 0.
  assert [r.stderr > 0 for r in base] == [True, True, False, True, True, False]
  assert base[-1] == LogLikelihood(0.0, 0.0, True, 0)


def test_dlm_rolling_bound_covers_every_token_with_seq_len_minus_one_windows(dlm_scorer):
  scorer = dlm_scorer
  text = "import os\n" * 3
  [out] = scorer.loglikelihood_rolling([text])
  windows = rolling_windows(TOK.encode(text), TOK.eod_id, SEQ_LEN - 1)
  parts = scorer.loglikelihood_tokens(windows)
  assert out.num_tokens == len(text) == sum(p.num_tokens for p in parts)
  assert out.logprob == pytest.approx(sum(p.logprob for p in parts), rel=1e-6)
  assert out.stderr == pytest.approx(np.sqrt(sum(p.stderr ** 2 for p in parts)), rel=1e-6)
  assert out.logprob < 0 and out.stderr > 0


def test_dlm_rejects_a_continuation_that_leaves_no_room_for_context(model_and_params):
  scorer = Scorer(_loaded(model_and_params, "dlm"), num_samples=4)
  with pytest.raises(ConfigError, match="request 0: continuation of 16 tokens .* at most 15"):
    scorer.loglikelihood([("", "0123456789abcdef")])
  with pytest.raises(ConfigError, match="empty context tokens"):
    scorer.loglikelihood_tokens([([], [1, 2])])


def test_bad_scorer_settings_are_config_errors(model_and_params):
  lm = _loaded(model_and_params, "dlm")
  with pytest.raises(ConfigError, match="unknown DLM likelihood estimator 'mc'"):
    Scorer(lm, estimator="mc")
  with pytest.raises(ConfigError, match="cfg_scale=-1"):
    Scorer(lm, cfg_scale=-1)
  with pytest.raises(ConfigError, match="num_samples=0"):
    Scorer(lm, num_samples=0)
  with pytest.raises(ConfigError, match=r"batching=\(8, 3\): .* divide num_samples=8"):
    Scorer(lm, num_samples=8, batching=(8, 3))
  with pytest.raises(ConfigError, match=r"batching=\(3, 1\): requests must be a positive "
                                        "multiple of 8"):
    Scorer(lm, batching=(3, 1))
  with pytest.raises(ConfigError, match="length_steps=0"):
    Scorer(lm, length_steps=0)


def test_explicit_batching_and_power_of_two_lengths_give_the_same_estimates(model_and_params,
                                                                           dlm_scorer):
  """Overrides used by the benchmark change only the shapes of the passes, never a result."""
  base = dlm_scorer.loglikelihood(REQUESTS)
  other = Scorer(_loaded(model_and_params, "dlm"), estimator=dlm_scorer.estimator,
                 num_samples=dlm_scorer.num_samples, batch_size=64, length_steps=1,
                 batching=(8, 1))
  assert (other.requests_per_batch, other.samples_per_pass, other.length_steps) == (8, 1, 1)
  out = other.loglikelihood(REQUESTS)
  np.testing.assert_allclose([r.logprob for r in out], [r.logprob for r in base], rtol=1e-5)
  assert {p[0] for p in other.forward_passes} == {8}  # 8 rows in every pass, 1 sample each


def test_dlm_batching_fills_the_batch_with_whole_requests_per_device():
  assert dlm_batching(48, 1, 128, "iid") == (3, 16)  # not 1 x 32: 48 rows
  assert dlm_batching(32, 1, 128, "fixed_count") == (1, 32)
  assert dlm_batching(16, 8, 8, "fixed_count") == (8, 2)
  assert dlm_batching(64, 1, 8, "iid") == (8, 8)
  assert dlm_batching(24, 1, 7, "iid") == (24, 1)  # g divides num_samples: 3 x 7 is 21 rows
  assert dlm_batching(32, 1, 128, "chain") == (1, 32)
  assert dlm_batching(4, 8, 128, "iid") == (8, 1)  # at least one request per device


def test_length_buckets_pad_by_at_most_a_quarter_and_respect_the_cap():
  for n in range(1, 3000):
    b = padded_length(n, 4096, 4)
    assert n <= b and b % 8 == 0 and (n <= 32 or b - n < n / 4), (n, b)
    assert padded_length(n, 4096) == max(8, 1 << (n - 1).bit_length())  # default: powers of two
  assert padded_length(130, 150, 4) == 150


def test_dlm_logits_only_on_the_continuation_window(dlm_scorer):
  dlm_scorer.forward_passes.clear()
  dlm_scorer.loglikelihood([("x" * 12, "ab"), ("y" * 5, "c")])  # 8 rows x 2 samples per pass
  # One batch padded to 16 (14 tokens), logits on 8 positions: the greedy pass, 4 sample passes.
  assert dlm_scorer.forward_passes == [(8, 16, 8, 1), (16, 16, 8, 4)]
