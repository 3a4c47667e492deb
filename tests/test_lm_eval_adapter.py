"""The lm-eval adapter: its answers are the Scorer's and generate_text's, through lm-eval's own API.

Tiny AR and MDM models (tests/configs/tiny.py, 4 training steps) are loaded the way lm-eval loads
them: from model_args naming the config file and the run directory.
"""
import dataclasses
import json
import sys

import pytest

from _shared import TINY_CONFIG, tiny_config

pytest.importorskip("lm_eval", reason="lm-evaluation-harness not installed (extra: lm_eval)")

from lm_eval.api.instance import Instance  # noqa: E402

from dlmscale.errors import ConfigError  # noqa: E402
from dlmscale import lm_eval_adapter as adapter  # noqa: E402
from dlmscale.evaluation.scorer import Scorer  # noqa: E402

NUM_SAMPLES = 8
BATCH = 16
PAIRS = [("def f(x):", " return x"), ("import os\n", "import sys"), ("", "class A:"),
         ("for i in range(3): ", "pass"), ("x = 1", " + 2")]
LONG_TEXT = "def add(a, b):\n  return a + b\n\n" * 3  # ~100 bytes: several 32-token windows


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  from dlmscale import experiment, runner
  cfg = tiny_config()
  root = tmp_path_factory.mktemp("lm_eval_adapter")
  for objective in ("ar", "mdm"):
    runner.run_training(experiment.build_experiment(cfg, objective), str(root / objective),
                        stop_after=4)
  return str(root)


def model_args(workdir, objective):
  return (f"config={TINY_CONFIG},workdir={workdir},objective={objective},"
          f"num_samples={NUM_SAMPLES},estimator=fixed_count,seed=3")


@pytest.fixture(scope="module")
def models(workdir):
  """lm-eval's construction path: the registered class from a model_args string."""
  from lm_eval.api.registry import get_model
  cls = get_model("dlmscale")
  assert cls is adapter.DlmscaleLM
  ar = cls.create_from_arg_string(model_args(workdir, "ar"), {"batch_size": BATCH, "device": None})
  # The mdm model: checkpoint=<workdir>/<objective> and the run's saved config.json.
  mdm = cls.create_from_arg_string(
      f"checkpoint={workdir}/mdm,num_samples={NUM_SAMPLES},estimator=fixed_count,seed=3",
      {"batch_size": BATCH, "device": None})
  return {"ar": ar, "mdm": mdm}


@pytest.fixture(scope="module")
def references(models):
  """Independent Scorers over the same checkpoints, with the adapter's settings."""
  return {kind: Scorer(lm.lm, estimator="fixed_count", num_samples=NUM_SAMPLES, batch_size=BATCH,
                       seed=3) for kind, lm in models.items()}


def instances(request_type, args_list):
  return [Instance(request_type=request_type, doc={}, arguments=args, idx=i)
          for i, args in enumerate(args_list)]


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_loglikelihood_equals_the_scorer(models, references, kind):
  lm = models[kind]
  assert lm.lm.kind == ("ar" if kind == "ar" else "dlm") and lm.lm.step == 4
  assert (lm.scorer.num_samples, lm.scorer.seed, lm.batch_size) == (NUM_SAMPLES, 3, BATCH)
  got = lm.loglikelihood(instances("loglikelihood", PAIRS))
  assert got == [(w.logprob, w.greedy) for w in references[kind].loglikelihood(PAIRS)]
  assert all(lp < 0 for lp, _ in got)


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_loglikelihood_rolling_equals_the_scorer(models, references, kind):
  lm = models[kind]
  texts = [LONG_TEXT, "x = 1\n"]
  got = lm.loglikelihood_rolling(instances("loglikelihood_rolling", [(t,) for t in texts]))
  assert got == [w.logprob for w in references[kind].loglikelihood_rolling(texts)]
  assert got[0] < got[1] < 0
  if kind == "ar":  # exact: a text inside one window scores as the continuation of eod
    (single, _), = lm.loglikelihood(instances("loglikelihood", [("", texts[1])]))
    assert got[1] == pytest.approx(single, rel=1e-5)


def _write_task(tmp_path, rows):
  data = tmp_path / "rows.jsonl"
  data.write_text("".join(json.dumps(r) + "\n" for r in rows))
  yaml_path = tmp_path / "tiny_mc.yaml"
  yaml_path.write_text(f"""task: dlmscale_tiny_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
  cache_dir: {tmp_path / "hf_cache"}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
  - metric: acc_norm
""")
  return yaml_path


ROWS = [dict(question="def f(x):", choices=["return x", "zzzz qq", "}}}{"], answer=0),
        dict(question="import", choices=["os", "sys as s", "!!"], answer=1),
        dict(question="x = 1 +", choices=["2", "))(", "q"], answer=2),
        dict(question="class A", choices=["(object):", ":", "]]"], answer=1)]


def test_cli_module_evaluates_a_local_multiple_choice_task(workdir, references, tmp_path,
                                                           monkeypatch):
  """`python -m dlmscale.lm_eval_adapter ...` in-process: --model defaults to dlmscale,
  model_args load the checkpoint, lm-eval finds a local task YAML with --include_path, and
  simple_evaluate's acc / acc_norm are those of the Scorer's log-likelihoods."""
  _write_task(tmp_path, ROWS)
  monkeypatch.setattr(sys, "argv", ["lm_eval_adapter"])
  adapter.main(["--model_args", model_args(workdir, "ar"), "--tasks", "dlmscale_tiny_mc",
                "--include_path", str(tmp_path), "--batch_size", str(BATCH),
                "--output_path", str(tmp_path / "out")])
  (results_file,) = (tmp_path / "out").rglob("results_*.json")
  metrics = json.loads(results_file.read_text())["results"]["dlmscale_tiny_mc"]
  # The same requests through the Scorer: " " + choice after the question (lm-eval's format);
  # acc_norm divides by the choice's length in characters.
  acc, acc_norm = [], []
  for row in ROWS:
    scores = [r.logprob for r in references["ar"].loglikelihood(
        [(row["question"], " " + c) for c in row["choices"]])]
    norm = [s / len(c) for s, c in zip(scores, row["choices"])]
    acc.append(max(range(3), key=scores.__getitem__) == row["answer"])
    acc_norm.append(max(range(3), key=norm.__getitem__) == row["answer"])
  assert metrics["acc,none"] == pytest.approx(sum(acc) / len(ROWS))
  assert metrics["acc_norm,none"] == pytest.approx(sum(acc_norm) / len(ROWS))
  assert metrics["acc_stderr,none"] > 0 or sum(acc) in (0, len(ROWS))


@pytest.mark.parametrize("kind", ["ar", "mdm"])
def test_generate_until_cuts_at_until_and_equals_generate_text(models, kind, caplog):
  from dlmscale.sampling import generate_text
  lm = models[kind]
  prompt = "def f(x):\n"
  (free,) = lm.generate_until(instances("generate_until", [(prompt, {"max_gen_toks": 16})]))
  kw = dict(steps=0, block_length=0) if kind == "mdm" else {}
  assert free == generate_text(lm.lm, [prompt], max_new_tokens=16, seed=3, **kw)[0][0]
  assert len(free) >= 4, free
  stop = free[2]  # a character the greedy completion reaches: it must be cut there
  gen_kwargs = {"until": [stop], "max_gen_toks": 16, "do_sample": False}
  extra = dict(gen_kwargs, repetition_penalty=1.3)  # unknown to dlmscale: ignored, one warning
  cut, again = lm.generate_until(instances("generate_until", [(prompt, gen_kwargs),
                                                              (prompt, extra)]))
  assert cut == again == free[:free.index(stop)]
  assert stop not in cut
  assert [r.message.count("repetition_penalty") for r in caplog.records] == [1]


def test_generate_until_keeps_the_end_of_a_long_prompt(models):
  from dlmscale.sampling import generate_text
  lm = models["ar"]
  long_prompt = "# " + "z" * 100 + "\ndef f(x):\n"
  (out,) = lm.generate_until(instances("generate_until", [(long_prompt, {"max_gen_toks": 16})]))
  tail = long_prompt[-(32 - 1 - 16):]  # eod + prompt + 16 new tokens fill the 32-token window
  assert lm._fit_prompt(long_prompt, 16) == tail
  assert out == generate_text(lm.lm, [tail], max_new_tokens=16, seed=3)[0][0]
  # A budget beyond the window shrinks to leave room for eod and one prompt token.
  assert lm._generation_settings({"max_gen_toks": 256})["max_new_tokens"] == 32 - 2


def test_generation_settings_follow_lm_eval_gen_kwargs():
  assert adapter.generation_settings({}, 256) == dict(
      stop=(), max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0)
  assert adapter.generation_settings({"until": "\n\n", "max_gen_toks": 7}, 256)["stop"] == (
      "\n\n",)
  assert adapter.generation_settings({"do_sample": True}, 9)["temperature"] == 1.0
  assert adapter.generation_settings({"do_sample": False, "temperature": 0.8}, 9)[
      "temperature"] == 0.0
  assert adapter.generation_settings({"temperature": 0.5, "top_k": 5, "top_p": 0.9}, 9) == dict(
      stop=(), max_new_tokens=9, temperature=0.5, top_k=5, top_p=0.9)


def test_the_saved_run_config_equals_the_experiment_file(models, workdir):
  from dlmscale.config import to_json
  assert to_json(models["mdm"].lm.cfg) == to_json(tiny_config())
  cfg = adapter.run_config(workdir, "ar")
  assert to_json(cfg) == to_json(models["ar"].lm.cfg)
  with pytest.raises(ConfigError, match="config.json not found"):
    adapter.run_config(workdir, "no_such_objective")


def test_batch_size_takes_an_int_or_auto():
  assert [adapter._batch_size(v) for v in ("64", 8, "auto", "auto:4", None)] == [64, 8, 32, 32, 32]
  with pytest.raises(ConfigError, match="batch_size='big'"):
    adapter._batch_size("big")


def test_load_config_applies_overrides_and_rejects_bad_ones(tmp_path):
  cfg = adapter.load_config(TINY_CONFIG, "train.lr=1e-3; data.seq_len=64;data.tokenizer=byte")
  assert (cfg.train.lr, cfg.data.seq_len, cfg.data.tokenizer) == (1e-3, 64, "byte")
  assert adapter.load_config(TINY_CONFIG, {"train.lr": 5e-4}).train.lr == 5e-4
  with pytest.raises(ConfigError, match="train.no_such_key"):
    adapter.load_config(TINY_CONFIG, "train.no_such_key=1")
  with pytest.raises(ConfigError, match="not path=value"):
    adapter.load_config(TINY_CONFIG, "train.lr")
  with pytest.raises(ConfigError, match="not found"):
    adapter.load_config(str(tmp_path / "missing.py"))
  with pytest.raises(ConfigError, match="config=path"):
    adapter.DlmscaleLM(workdir=str(tmp_path))
  with pytest.raises(ConfigError, match="config=path"):
    adapter.DlmscaleLM(config=TINY_CONFIG, objective="ar")
  with pytest.raises(ConfigError, match="not both"):
    adapter.DlmscaleLM(checkpoint=str(tmp_path / "ar"), objective="ar")



def test_max_length_widens_the_scoring_window(workdir, models):
  """A continuation longer than the trained 32-token window is refused there; with max_length=64
  it scores as a Scorer over the same checkpoint with a 64-token window (what eval.max_length
  does), and generation keeps the trained window."""
  from lm_eval.api.registry import get_model
  long_pair = ("def f(x):", " return " + "x + " * 12 + "1")  # 57 byte tokens
  with pytest.raises(ConfigError, match="eval.max_length"):
    models["ar"].loglikelihood(instances("loglikelihood", [long_pair]))
  wide = get_model("dlmscale").create_from_arg_string(
      model_args(workdir, "ar") + ",max_length=64", {"batch_size": BATCH, "device": None})
  assert (wide.max_length, wide.scorer.lm.seq_len, wide.lm.seq_len) == (64, 64, 32)
  reference = Scorer(dataclasses.replace(models["ar"].lm, seq_len=64), estimator="fixed_count",
                     num_samples=NUM_SAMPLES, batch_size=BATCH, seed=3)
  got = wide.loglikelihood(instances("loglikelihood", [long_pair] + PAIRS))
  assert got == [(w.logprob, w.greedy) for w in reference.loglikelihood([long_pair] + PAIRS)]
  narrow = models["ar"].loglikelihood(instances("loglikelihood", PAIRS))  # these fit in 32
  assert [g for _, g in got[1:]] == [g for _, g in narrow]
  assert [lp for lp, _ in got[1:]] == pytest.approx([lp for lp, _ in narrow], rel=1e-5)
  assert wide._generation_settings({"max_gen_toks": 256})["max_new_tokens"] == 32 - 2


def test_max_length_defaults_to_the_run_config_and_rejects_bad_values(models):
  lm = models["ar"].lm
  assert adapter.scoring_window(lm, None) == adapter.scoring_window(lm, 0) == 32
  cfg = tiny_config(**{"eval.max_length": 48})
  assert adapter.scoring_window(dataclasses.replace(lm, cfg=cfg), None) == 48
  assert adapter.scoring_window(dataclasses.replace(lm, cfg=cfg), "96") == 96
  for bad in (-1, 1, "long"):
    with pytest.raises(ConfigError, match="max_length="):
      adapter.scoring_window(lm, bad)
