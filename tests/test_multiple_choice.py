"""Benchmark metrics: acc / acc_norm / delta-NLL / perplexity arithmetic on hand-computed cases,
the requests a task sends, and one end-to-end run with the real Scorer on a tiny trained model."""
import dataclasses
import math
import os

import numpy as np
import pytest

from dlmscale.errors import ConfigError
from dlmscale.evaluation import multiple_choice as mc
from dlmscale.evaluation import tasks
from dlmscale.evaluation.tasks.base import Example, Task, choice_example

from _shared import tiny_config

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tasks")


@dataclasses.dataclass(frozen=True)
class LogLikelihood:
  """The fields of dlmscale.evaluation.scorer.LogLikelihood that the metrics read."""
  logprob: float
  stderr: float
  greedy: bool
  num_tokens: int


class TableScorer:
  """Known log-likelihoods per continuation (a unit test of the metric arithmetic, not of a
  model); records every request it is asked."""

  def __init__(self, logprobs: dict[str, float], greedy=()):
    self.logprobs, self.greedy, self.requests = logprobs, set(greedy), []

  def loglikelihood(self, requests):
    self.requests.extend(requests)
    return [LogLikelihood(logprob=self.logprobs[x], stderr=0.25, greedy=x in self.greedy,
                          num_tokens=len(x)) for _, x in requests]


def _task(examples, output="multiple_choice"):
  return Task("toy", output, tuple(examples))


def test_mean_stderr_is_the_sample_standard_error():
  assert mc.mean_stderr([0, 1, 1]) == pytest.approx((2 / 3, 1 / 3))  # sqrt((1/3) / 3)
  mean, stderr = mc.mean_stderr([5.0])
  assert mean == 5.0 and math.isnan(stderr)


def test_acc_and_acc_norm_differ_when_choice_lengths_differ():
  # Example 1: " ab" wins raw (-2 > -3) but " abcdef" wins per character (-3/6 > -2/2).
  # Example 2: both metrics pick " x" (gold); example 3: both pick " long answer" (not gold).
  examples = [choice_example("q1", ["ab", "abcdef"], gold=1),
              choice_example("q2", ["x", "yy"], gold=0),
              choice_example("q3", ["zz", "long answer"], gold=0)]
  scorer = TableScorer({" ab": -2.0, " abcdef": -3.0, " x": -1.0, " yy": -4.0, " zz": -9.0,
                        " long answer": -5.0})
  m = mc.score_task(scorer, _task(examples))
  assert (m["acc"], m["acc_norm"]) == pytest.approx((1 / 3, 2 / 3))
  assert m["acc_stderr"] == pytest.approx(1 / 3) and m["acc_norm_stderr"] == pytest.approx(1 / 3)
  assert m["num_examples"] == 3 and m["num_fewshot"] == 0
  assert m["examples"][0] == {"gold": 1, "loglikelihoods": [-2.0, -3.0], "stderrs": [0.25, 0.25],
                              "greedy": [False, False]}


def test_delta_nll_on_a_hand_case():
  # lls (-1, -2, -4), gold 0: NLL(correct) 1, wrong NLLs 2 and 4 -> delta mean 2, min 1.
  # lls (-3, -1, -2), gold 0: NLL(correct) 3, wrong NLLs 1 and 2 -> delta mean -1.5, min -2.
  lls = np.array([[-1.0, -2.0, -4.0], [-3.0, -1.0, -2.0]])
  per = mc.choice_scores(lls, [0, 0], np.ones((2, 3)), np.ones((2, 3), bool))
  np.testing.assert_allclose(per["nll_correct"], [1.0, 3.0])
  np.testing.assert_allclose(per["delta_nll_mean"], [2.0, -1.5])
  np.testing.assert_allclose(per["delta_nll_min"], [1.0, -2.0])
  np.testing.assert_array_equal(per["acc"], [1.0, 0.0])
  m = mc.summarize(per)
  assert (m["nll_correct"], m["nll_correct_stderr"]) == pytest.approx((2.0, 1.0))
  assert (m["delta_nll_mean"], m["delta_nll_mean_stderr"]) == pytest.approx((0.25, 1.75))
  assert (m["delta_nll_min"], m["delta_nll_min_stderr"]) == pytest.approx((-0.5, 1.5))


def test_padding_options_never_win_or_count_as_wrong_options():
  # A 2-option example next to a 4-option one: its padded slots hold 0.0 (> every real ll).
  examples = [choice_example("a", ["p", "q"], gold=1),
              choice_example("b", ["r", "s", "t", "u"], gold=2)]
  scorer = TableScorer({" p": -8.0, " q": -6.0, " r": -5.0, " s": -7.0, " t": -1.0, " u": -3.0})
  m = mc.score_task(scorer, _task(examples))
  assert m["acc"] == 1.0 and m["acc_norm"] == 1.0
  # delta mean: (8 - 6) and ((5 + 7 + 3) / 3 - 1); delta min: (8 - 6) and (3 - 1).
  assert m["delta_nll_mean"] == pytest.approx((2.0 + 4.0) / 2)
  assert m["delta_nll_min"] == pytest.approx(2.0)
  assert [len(e["loglikelihoods"]) for e in m["examples"]] == [2, 4]


def test_groups_get_their_own_accuracy_and_the_task_pools_them():
  examples = [choice_example("a", ["x", "y"], gold=0, group="math"),
              choice_example("b", ["x", "y"], gold=1, group="law"),
              choice_example("c", ["x", "y"], gold=0, group="math")]
  m = mc.score_task(TableScorer({" x": -1.0, " y": -2.0}), _task(examples))
  assert m["acc"] == pytest.approx(2 / 3)
  assert m["groups"] == {"law": {"acc": 0.0, "acc_norm": 0.0, "num_examples": 1},
                         "math": {"acc": 1.0, "acc_norm": 1.0, "num_examples": 2}}


def test_shared_continuation_options_score_each_context():
  ex = Example(contexts=("the cat", "the dog"), continuations=(" sat.",), gold=1,
               choice_lengths=(4, 4))

  class ByContext(TableScorer):
    def loglikelihood(self, requests):
      self.requests.extend(requests)
      return [LogLikelihood(-1.0 if c.endswith("dog") else -2.0, 0.0, False, 1)
              for c, _ in requests]

  scorer = ByContext({})
  m = mc.score_task(scorer, _task([ex]))
  assert scorer.requests == [("the cat", " sat."), ("the dog", " sat.")]
  assert m["acc"] == 1.0 and m["acc_norm"] == 1.0


def test_loglikelihood_task_reports_greedy_acc_and_perplexity():
  examples = [Example(("ctx1",), (" one",), 0, (3,)), Example(("ctx2",), (" two",), 0, (3,))]
  m = mc.score_task(TableScorer({" one": -1.0, " two": -3.0}, greedy={" one"}),
                    _task(examples, "loglikelihood"))
  assert (m["acc"], m["acc_stderr"]) == pytest.approx((0.5, 0.5))
  assert (m["nll"], m["nll_stderr"]) == pytest.approx((2.0, 1.0))
  assert m["perplexity"] == pytest.approx(math.exp(2.0))
  assert m["perplexity_stderr"] == pytest.approx(math.exp(2.0) * 1.0)
  assert "acc_norm" not in m


def test_score_task_sends_the_few_shot_prompts_of_the_first_limit_examples():
  task = tasks.load_task("piqa", os.path.join(DATA, "piqa.arrow"))
  logprobs = {x: -float(len(x)) for e in task.examples for _, x in e.requests()}
  scorer = TableScorer(logprobs)
  m = mc.score_task(scorer, task, num_fewshot=2, limit=3, seed=7)
  expected = [r for i in range(3) for r in task.examples[i].requests(task.demos(i, 2, 7))]
  assert scorer.requests == expected
  assert m["num_examples"] == 3 and m["num_fewshot"] == 2
  assert all(r[0].count("\n\nQuestion: ") == 2 for r in scorer.requests)


def test_evaluate_tasks_reads_paths_and_rejects_bad_arguments():
  paths = {"arc_challenge": os.path.join(DATA, "arc_challenge.jsonl")}
  task = tasks.load_task("arc_challenge", paths["arc_challenge"])
  # Every option scores the same per character, so the first option wins acc_norm.
  logprobs = {x: -2.0 * (len(x) - 1) for e in task.examples for _, x in e.requests()}
  out = mc.evaluate_tasks(TableScorer(logprobs), ["arc_challenge"], paths=paths)
  assert list(out) == ["arc_challenge"]
  golds = [e.gold for e in task.examples]
  assert out["arc_challenge"]["acc_norm"] == np.mean([g == 0 for g in golds])
  with pytest.raises(ConfigError, match="paths given for tasks not evaluated: \\['piqa'\\]"):
    mc.evaluate_tasks(TableScorer({}), ["arc_challenge"], paths={**paths, "piqa": "x"})
  with pytest.raises(ConfigError, match="unknown task 'arc'"):
    mc.evaluate_tasks(TableScorer({}), ["arc"])
  with pytest.raises(ConfigError, match="limit=-1"):
    mc.evaluate_tasks(TableScorer({}), ["arc_challenge"], limit=-1, paths=paths)


def test_a_scorer_config_error_names_the_task():
  class TooLong:
    def loglikelihood(self, requests):
      raise ConfigError("request 1: continuation of 40 tokens does not fit the 32-token window")

  with pytest.raises(ConfigError, match=r"^toy \(2-shot\): request 1: continuation of 40"):
    mc.score_task(TooLong(), _task([choice_example(f"q{i}", ["a"], 0) for i in range(3)]),
                  num_fewshot=2)


def test_format_table_shows_mean_and_stderr_per_metric():
  results = {"piqa": {"acc": 0.5, "acc_stderr": 0.1, "acc_norm": 0.625, "acc_norm_stderr": 0.125,
                      "nll_correct": 3.0, "nll_correct_stderr": 0.5, "delta_nll_mean": 0.25,
                      "delta_nll_mean_stderr": 0.05, "delta_nll_min": 0.125,
                      "delta_nll_min_stderr": 0.0625, "num_examples": 8, "num_fewshot": 0},
             "lambada": {"acc": 0.25, "acc_stderr": 0.2, "perplexity": 12.0,
                         "perplexity_stderr": 1.5, "num_examples": 4, "num_fewshot": 1}}
  lines = mc.format_table(results).splitlines()
  assert lines[0].startswith("| task | n | shots | acc | acc_norm | NLL(correct)")
  assert lines[2] == ("| piqa | 8 | 0 | 0.5000 +- 0.1000 | 0.6250 +- 0.1250 | 3.0000 +- 0.5000 | "
                      "0.2500 +- 0.0500 | 0.1250 +- 0.0625 | - |")
  assert lines[3] == "| lambada | 4 | 1 | 0.2500 +- 0.2000 | - | - | - | - | 12.0000 +- 1.5000 |"



@pytest.fixture(scope="module")
def trained_ar(tmp_path_factory):
  """The tiny config's AR model after 4 training steps, loaded as every evaluator loads one."""
  from dlmscale import experiment, runner
  cfg = tiny_config()
  workdir = tmp_path_factory.mktemp("multiple_choice")
  runner.run_training(experiment.build_experiment(cfg, "ar"), str(workdir / "ar"), stop_after=4)
  return experiment.load_model(cfg, str(workdir), "ar")


def test_end_to_end_with_the_real_scorer_on_a_tiny_trained_model(trained_ar):
  from dlmscale.evaluation.scorer import Scorer
  scorer = Scorer(trained_ar, batch_size=16)
  paths = {"mmlu_anatomy": os.path.join(DATA, "mmlu"),
           "winogrande": os.path.join(DATA, "winogrande"),
           "lambada": os.path.join(DATA, "lambada.jsonl.gz")}
  out = mc.evaluate_tasks(scorer, list(paths), num_fewshot=1, limit=3, seed=0, paths=paths)
  for name, m in out.items():
    task = tasks.load_task(name, paths[name])
    assert m["num_examples"] == 3
    accs = []
    for i, record in enumerate(m["examples"]):
      direct = scorer.loglikelihood(task.examples[i].requests(task.demos(i, 1, 0)))
      assert record["loglikelihoods"] == [r.logprob for r in direct], (name, i)
      assert all(ll < 0 for ll in record["loglikelihoods"]) and set(record["stderrs"]) == {0.0}
      accs.append(np.argmax(record["loglikelihoods"]) == record["gold"])
    if name == "lambada":
      nll = -np.mean([r["loglikelihoods"][0] for r in m["examples"]])
      assert m["perplexity"] == pytest.approx(math.exp(nll))
    else:
      assert m["acc"] == pytest.approx(np.mean(accs))
      assert m["delta_nll_min"] > 0 or m["acc"] < 1
  assert "| lambada | 3 | 1 |" in mc.format_table(out)


def test_dlm_scores_carry_the_monte_carlo_stderr_into_the_records(trained_ar):
  from dlmscale import experiment, runner, train
  from dlmscale.evaluation import loaded
  from dlmscale.evaluation.scorer import Scorer
  exp = experiment.build_experiment(trained_ar.cfg, "mdm")
  params = train.create_state(exp.model, exp.optimizer, 0, exp.shardings)["params"]
  scorer = Scorer(experiment.loaded_model(exp, params), num_samples=4, batch_size=16, seed=1)
  task = tasks.load_task("openbookqa", os.path.join(DATA, "openbookqa"))
  m = mc.score_task(scorer, task, limit=2)
  again = mc.score_task(scorer, task, limit=2)
  assert m["examples"] == again["examples"]  # seeded: the same bound every time
  for record, ex in zip(m["examples"], task.examples):
    assert len(record["loglikelihoods"]) == ex.num_options
    assert all(s > 0 for s in record["stderrs"])  # multi-token options: a Monte Carlo estimate
  assert 0 <= m["acc"] <= 1 and np.isfinite(m["delta_nll_mean"])
