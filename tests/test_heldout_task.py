"""The `heldout` task: multiple choice built from the run's own validation rows.

Built on the tiny test corpus (32-token rows, directories held out, some validation rows dropped
as copies of train rows), so the variant is heldout_c16_n8; scored end to end by the real Scorer
on random-parameter AR and DLM models.
"""
import collections
import glob
import json
import os

import numpy as np
import pytest

from _shared import tiny_config
from dlmscale import config as config_lib
from dlmscale.errors import ConfigError
from dlmscale.evaluation import multiple_choice as mc
from dlmscale.evaluation import tasks
from dlmscale.evaluation.scorer import encode_pair
from dlmscale.evaluation.tasks import heldout

NAME = "heldout_c16_n8_e40"
VARIANT = heldout.Variant(context=16, continuation=8, distractors=3, examples=40)


@pytest.fixture(scope="module")
def corpus():
  from dlmscale.data import ensure_prepared
  return ensure_prepared(tiny_config().data)


@pytest.fixture(scope="module")
def val(corpus):
  return corpus.val.to_numpy()


@pytest.fixture(scope="module")
def built(val, corpus):
  return heldout.build(val, corpus.tokenizer, VARIANT, seed=0, name=NAME)


def test_names_parse_to_variants_and_bad_ones_are_one_line_errors():
  assert heldout.parse_name("heldout") == heldout.Variant(64, 16, 3, 400)
  assert heldout.parse_name("heldout_c96_n32") == heldout.Variant(96, 32, 3, 400)
  assert heldout.parse_name("heldout_d1_e50") == heldout.Variant(64, 16, 1, 50)
  assert tasks.check_task_names("piqa,heldout_c16_n8") == ("piqa", "heldout_c16_n8")
  for bad, message in [("heldout_x", "unknown heldout variant 'heldout_x'"),
                       ("heldout_n32_c96", "in that order"),  # options out of order
                       ("heldout_c0", "must all be >= 1")]:
    with pytest.raises(ConfigError, match=message) as e:
      tasks.check_task_names(["piqa", bad])
    assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="heldout\\[_c<context>\\]"):
    tasks.check_task_names(["heldowt"])  # an unknown task lists the heldout form among choices


def test_a_config_with_heldout_validates_and_a_bad_variant_does_not():
  config_lib.validate(tiny_config(**{"eval.tasks": ("heldout",)}))
  config_lib.validate(tiny_config(**{"eval.tasks": ("hellaswag", "heldout_c16_n8_d1")}))
  with pytest.raises(ConfigError, match="unknown heldout variant 'heldout_c16_q8'") as e:
    config_lib.validate(tiny_config(**{"eval.tasks": ("heldout_c16_q8",)}))
  assert "\n" not in str(e.value)


def test_same_seed_same_examples_another_seed_others(val, corpus, built):
  again = heldout.build(val, corpus.tokenizer, VARIANT, seed=0, name=NAME)
  assert again == built
  other_task, other_items = heldout.build(val, corpus.tokenizer, VARIANT, seed=1, name=NAME)
  assert len({it.row for it in other_items} & {it.row for it in built[1]}) < 10
  assert other_task.examples != built[0].examples
  # Asking for fewer examples gives the same first ones (eval.limit and _e agree).
  fewer = heldout.build(val, corpus.tokenizer, heldout.Variant(16, 8, 3, 15), seed=0)
  assert fewer[0].examples == built[0].examples[:15] and fewer[1] == built[1][:15]


def test_context_and_gold_are_a_validation_span_in_no_train_row(val, corpus, built):
  task, items = built
  tok = corpus.tokenizer
  assert len(task.examples) == 40
  # The tiny corpus drops validation rows found in train: the split is the guarded one.
  assert corpus.meta["splits"]["val"]["num_sequences_dropped_as_in_train"] > 0
  train_rows = set(map(bytes, corpus.train.to_numpy()))
  for ex, it in zip(task.examples, items):
    context, gold_text = ex.requests()[ex.gold]
    context_ids, gold_ids = encode_pair(tok, context, gold_text)
    row = val[it.row]
    np.testing.assert_array_equal(context_ids, row[it.start - 16:it.start])
    np.testing.assert_array_equal(gold_ids, row[it.start:it.start + 8])
    assert tok.eod_id not in row[it.start - 16:it.start + 8]
    assert it.options[it.gold] == (it.row, it.start) and it.gold == ex.gold
    for r, _ in it.options:
      assert bytes(val[r]) not in train_rows


def _whitespace(text):
  return sum(ch.isspace() for ch in text)


def test_distractors_are_other_rows_spans_matched_in_whitespace(val, corpus, built):
  task, items = built
  tok = corpus.tokenizer
  for ex, it in zip(task.examples, items):
    context = ex.contexts[0]
    gold_text = ex.continuations[ex.gold]
    assert len(set(ex.continuations)) == 4 and ex.num_options == 4
    for k, (text, (r, s)) in enumerate(zip(ex.continuations, it.options)):
      ids = encode_pair(tok, context, text)[1]  # each option is scored on exactly its 8 tokens
      np.testing.assert_array_equal(ids, val[r, s:s + 8])
      assert ex.choice_lengths[k] == len(text)
      if k != ex.gold:
        assert r != it.row and s >= 1 and not tok.decode(val[r, s - 1:s])[-1:].isspace()
        assert tok.eod_id not in val[r, s - 1:s + 8]
        assert abs(_whitespace(text) - _whitespace(gold_text)) <= heldout.WHITESPACE_SLACK


def test_gold_slot_is_seeded_and_balanced(val, corpus, built):
  golds = [ex.gold for ex in built[0].examples]
  assert collections.Counter(golds) == {0: 10, 1: 10, 2: 10, 3: 10}
  for b in range(0, 40, 4):
    assert sorted(golds[b:b + 4]) == [0, 1, 2, 3]
  other = heldout.build(val, corpus.tokenizer, VARIANT, seed=1)[0]
  assert golds != [ex.gold for ex in other.examples]


def test_rows_too_short_or_no_model_are_one_line_errors(val, corpus):
  with pytest.raises(ConfigError, match="do not fit the 32-token validation rows; use a smaller "
                                        "variant, e.g. heldout_c16_n8") as e:
    heldout.build(val, corpus.tokenizer, heldout.Variant(), name="heldout")
  assert "\n" not in str(e.value)
  with pytest.raises(ConfigError, match="built from a run's validation data"):
    tasks.load_task("heldout")


def test_sentencepiece_options_round_trip_to_their_ids(tmp_path):
  # SentencePiece drops a leading space when a piece is decoded alone and may merge pieces
  # across the cut: every option must still encode back to the sampled ids.
  from dlmscale.data.packing import pack
  from dlmscale.data.tokenizers import train_tokenizer
  paths = sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "*.py")))
  texts = [open(p, encoding="utf-8").read() for p in paths]
  tok = train_tokenizer("train_sentencepiece?vocab_size=400", texts, str(tmp_path))
  rows = pack([tok.encode(t) for t in texts], 48, tok.eod_id)
  task, items = heldout.build(rows, tok, heldout.Variant(24, 8, 3, 30), seed=0)
  assert len(task.examples) == 30
  for ex, it in zip(task.examples, items):
    for text, (r, s) in zip(ex.continuations, it.options):
      context_ids, ids = encode_pair(tok, ex.contexts[0], text)
      np.testing.assert_array_equal(context_ids, rows[it.row, it.start - 24:it.start])
      np.testing.assert_array_equal(ids, rows[r, s:s + 8])


@pytest.fixture(scope="module")
def models():
  """Random-parameter AR and DLM models of the tiny config, as evaluators load them."""
  from dlmscale import experiment, train
  out = {}
  for objective in ("ar", "mdm"):
    exp = experiment.build_experiment(tiny_config(), objective)
    params = train.create_state(exp.model, exp.optimizer, 0, exp.shardings)["params"]
    out[objective] = experiment.loaded_model(exp, params)
  return out


@pytest.mark.parametrize("objective", ["ar", "mdm"])
def test_scored_through_evaluate_tasks_like_hellaswag(models, built, objective):
  from dlmscale.evaluation.scorer import Scorer
  lm = models[objective]
  scorer = Scorer(lm, num_samples=4, batch_size=32, seed=0)
  out = mc.evaluate_tasks(scorer, [NAME], limit=12, seed=0)[NAME]
  assert out["num_examples"] == 12
  for key in ("acc", "acc_norm", "nll_correct", "delta_nll_mean", "delta_nll_min"):
    assert np.isfinite(out[key]) and np.isfinite(out[f"{key}_stderr"])
  assert 0 <= out["acc"] <= 1 and 0 <= out["acc_norm"] <= 1
  # The task scored is the one built from the model's own validation split with this seed.
  assert [r["gold"] for r in out["examples"]] == [ex.gold for ex in built[0].examples[:12]]
  direct = scorer.loglikelihood(built[0].examples[0].requests())
  assert out["examples"][0]["loglikelihoods"] == [r.logprob for r in direct]
  stderrs = [s for r in out["examples"] for s in r["stderrs"]]
  assert all(s == 0 for s in stderrs) if objective == "ar" else all(s > 0 for s in stderrs)


def test_suite_scores_heldout_with_the_run_seed_and_limit(models, val, corpus):
  from dlmscale.evaluation.suite import score_tasks
  lm = models["ar"]
  cfg = tiny_config(**{"eval.tasks": ("heldout_c16_n8",), "eval.limit": 5, "seed": 3})
  out = score_tasks(lm, cfg)["heldout_c16_n8"]
  assert out["num_examples"] == 5
  expected = heldout.build(val, corpus.tokenizer, heldout.Variant(16, 8), seed=3)[0]
  assert [r["gold"] for r in out["examples"]] == [ex.gold for ex in expected.examples[:5]]
  # eval.task_paths may name another prepared corpus; here the run's own, read by path.
  assert tasks.load_task("heldout_c16_n8", corpus.path, lm=lm, seed=3).examples == expected.examples
