"""Code benchmarks: problem sets, the subprocess sandbox, pass@k and the harness."""
import gzip
import itertools
import jax
import json
import math
import os
import resource
import socket
import subprocess
import sys

import numpy as np
import pytest

from _shared import tiny_config
from dlmscale import train
from dlmscale.checkpoint import Checkpointer
from dlmscale.data.errors import DataError
from dlmscale.errors import ConfigError
from dlmscale.evaluation.code import (evaluate_code, humaneval_problems, load_problems,
                                      mbpp_problems, pass_at_k, run_program, run_programs,
                                      summarize, truncate_completion)
from dlmscale.config import objective_names
from dlmscale.evaluation.code.harness import check_code_config as _check_code_config
from dlmscale.modes import code as code_command
from dlmscale.evaluation.code import sandbox_bwrap
from dlmscale.evaluation.code.problems import HUMANEVAL_STOPS, MBPP_STOPS


def check_code_config(cfg):
  return _check_code_config(cfg, objective_names(cfg))


@pytest.fixture(scope="module")
def humaneval():
  return {p.task_id: p for p in humaneval_problems()}


@pytest.fixture(scope="module")
def mbpp():
  return {p.task_id: p for p in mbpp_problems()}


# --- pass@k ---------------------------------------------------------------------------------

def _enumerated_pass_at_k(n: int, c: int, k: int) -> float:
  """Fraction of the k-subsets of n samples (the first c correct) holding a correct one."""
  subsets = list(itertools.combinations(range(n), k))
  return sum(min(s) < c for s in subsets) / len(subsets)


def test_pass_at_k_equals_enumeration_over_subsets():
  cases = [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)]
  for n, c, k in cases:
    assert pass_at_k(n, c, k)[0] == pytest.approx(_enumerated_pass_at_k(n, c, k), abs=1e-12)
  # Batched over problems of different sizes, one k.
  n, c = np.array([6, 3, 5, 4]), np.array([2, 0, 5, 1])
  expected = [_enumerated_pass_at_k(a, b, 3) for a, b in zip(n, c)]
  np.testing.assert_allclose(pass_at_k(n, c, 3), expected, atol=1e-12)


def test_pass_at_k_is_stable_for_large_n():
  for n, c, k in [(200, 3, 100), (200, 1, 1), (1000, 10, 500), (200, 0, 10)]:
    exact = 1 - math.comb(n - c, k) / math.comb(n, k)  # Python big integers: exact ratio
    assert pass_at_k(n, c, k)[0] == pytest.approx(exact, rel=1e-12, abs=1e-15)


def test_pass_at_k_rejects_k_above_n_and_bad_counts():
  with pytest.raises(ConfigError, match="pass@3 needs at least 3 samples"):
    pass_at_k([2, 5], [1, 1], 3)
  with pytest.raises(ConfigError, match="correct counts"):
    pass_at_k([2], [3], 1)
  with pytest.raises(ConfigError, match="k >= 1"):
    pass_at_k([2], [1], 0)


def test_summarize_means_over_problems_with_stderr():
  out = summarize([4, 4, 4], [4, 2, 0], ks=(1, 2))
  per_problem_1 = np.array([1.0, 0.5, 0.0])
  assert out["pass@1"] == pytest.approx(0.5)
  assert out["pass@1_stderr"] == pytest.approx(per_problem_1.std(ddof=1) / np.sqrt(3))
  assert out["pass@2"] == pytest.approx((1 + (1 - 1 / 6) + 0) / 3)


# --- problems -------------------------------------------------------------------------------

def test_real_problem_sets(humaneval, mbpp):
  assert len(humaneval) == 164 and "HumanEval/0" in humaneval and "HumanEval/163" in humaneval
  assert len(mbpp) == 500 and min(int(t.split("/")[1]) for t in mbpp) == 11
  first = mbpp["MBPP/11"]
  assert first.prompt == ('"""\nWrite a python function to remove first and last occurrence of a '
                          'given character from the string.\nassert remove_Occ("hello","l") == '
                          '"heo"\n"""\n')
  assert first.test.count("assert remove_Occ") == 3 and first.stop == MBPP_STOPS
  he = humaneval["HumanEval/0"]
  assert he.prompt.startswith("from typing import List\n") and he.stop == HUMANEVAL_STOPS
  assert he.test.rstrip().endswith("check(has_close_elements)")
  assert [p.task_id for p in load_problems("mbpp", limit=3)] == ["MBPP/11", "MBPP/12", "MBPP/13"]


def test_truncate_completion_cuts_at_earliest_column0_stop():
  body = "    if x:\n        return 1\n    return 2\n"
  assert truncate_completion(body, HUMANEVAL_STOPS) == body  # indented 'if' is not a stop
  text = body + "\nprint(f(3))\ndef g():\n    pass\n"
  assert truncate_completion(text, HUMANEVAL_STOPS) == body
  assert truncate_completion("\ndef h(): pass", HUMANEVAL_STOPS) == ""
  helper = "import re\ndef f(s):\n    return s\n"  # MBPP answers may import and define helpers
  assert truncate_completion(helper + "\nassert f(1) == 1\n", MBPP_STOPS) == helper


def _write_gz(path, lines):
  with gzip.open(path, "wt", encoding="utf-8") as fh:
    fh.write("\n".join(lines) + "\n")
  return str(path)


def test_malformed_problem_files_give_clear_errors(tmp_path, humaneval):
  good = {"task_id": "HumanEval/0", "prompt": "def f():\n", "canonical_solution": "  return 1\n",
          "test": "def check(c):\n  assert c() == 1\n", "entry_point": "f"}
  assert humaneval_problems(_write_gz(tmp_path / "ok.jsonl.gz", [json.dumps(good)]))[0].prompt \
      == "def f():\n"
  missing = {k: v for k, v in good.items() if k != "entry_point"}
  with pytest.raises(DataError, match="record 0 has no str field 'entry_point'"):
    humaneval_problems(_write_gz(tmp_path / "missing.jsonl.gz", [json.dumps(missing)]))
  with pytest.raises(DataError, match="unreadable"):
    humaneval_problems(_write_gz(tmp_path / "bad.jsonl.gz", ["{not json"]))
  plain = tmp_path / "plain.jsonl.gz"
  plain.write_text(json.dumps(good))  # not gzip
  with pytest.raises(DataError, match="unreadable"):
    humaneval_problems(str(plain))
  with pytest.raises(DataError, match="holds no problems"):
    humaneval_problems(_write_gz(tmp_path / "empty.jsonl.gz", [""]))
  with pytest.raises(DataError, match="record 1 has no dict field 'doc'"):
    mbpp_problems(_write_gz(tmp_path / "mbpp.jsonl.gz", [
        json.dumps({"native_id": 1, "doc": {"text": "t", "code": "c", "test_list": ["x"]}}),
        json.dumps({"native_id": 2})]))
  with pytest.raises(DataError, match="empty or non-string test_list"):
    mbpp_problems(_write_gz(tmp_path / "mbpp2.jsonl.gz", [
        json.dumps({"native_id": 1, "doc": {"text": "t", "code": "c", "test_list": []}})]))
  with pytest.raises(ConfigError, match="unknown code benchmark 'apps'"):
    load_problems("apps")


# --- sandbox --------------------------------------------------------------------------------

def test_reference_solutions_pass_and_wrong_ones_fail(humaneval, mbpp):
  chosen = [humaneval[t] for t in ("HumanEval/0", "HumanEval/32", "HumanEval/163")]
  chosen += [mbpp[t] for t in ("MBPP/11", "MBPP/342")]  # 342: classes and helpers
  wrong = humaneval["HumanEval/0"].program("    return False\n")
  results = run_programs([p.program(p.reference) for p in chosen] + [wrong], workers=2,
                         timeout_s=10.0, memory_mb=512)
  assert [r.status for r in results] == ["passed"] * len(chosen) + ["failed"]
  assert results[-1].detail.startswith("AssertionError")
  assert "AssertionError" in results[-1].output  # the traceback is captured


def test_sandbox_kills_infinite_loops_and_memory_bombs():
  limits_before = resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_CPU)
  programs = ["while True:\n  pass\n",  # CPU-bound
              "import time\nwhile True:\n  time.sleep(0.05)\n",  # idle: only the wall clock
              "x = bytearray(2 ** 34)\n",  # one huge allocation
              "s = 'x'\nwhile True:\n  s += s\n"]  # grows until the limit
  results = run_programs(programs, workers=4, timeout_s=1.0, memory_mb=256)
  assert [r.status for r in results] == ["timeout", "timeout", "memory", "memory"]
  assert all(r.seconds < 6.0 for r in results)  # 1 s + 1 s start-up, and slack for a busy host
  # The limits applied to the child only; this process is untouched.
  assert (resource.getrlimit(resource.RLIMIT_AS), resource.getrlimit(resource.RLIMIT_CPU)) == \
      limits_before


@pytest.mark.parametrize("network", ["auto", "socket_disabled"])
def test_sandbox_has_no_network(network):
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    program = f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2).close()\n"
    # Outside the sandbox the same program connects: the test can tell the difference.
    assert subprocess.run([sys.executable, "-c", program], timeout=30).returncode == 0
    result = run_program(program, timeout_s=5.0, memory_mb=512, network=network)
  assert result.status == "failed", result
  if network == "socket_disabled":
    assert result.network == "socket_disabled" and "ModuleNotFoundError" in result.detail
  else:
    assert result.network in ("bwrap", "namespace", "user_namespace", "socket_disabled")


def test_sandbox_workdir_is_fresh_and_removed_and_other_endings():
  program = ("import os\nopen('scratch.txt', 'w').write('x')\n"
             "print(os.getcwd(), sorted(os.listdir('.')))\nprint('y' * 5000)\n")
  result = run_program(program, timeout_s=5.0, memory_mb=512)
  assert result.passed
  workdir, listing = result.output.split("\n")[0].split(" ", 1)
  assert listing == "['scratch.txt']"  # nothing but what the program wrote
  assert not os.path.exists(workdir) and not os.path.exists(os.path.dirname(workdir))
  assert "truncated" in result.output and len(result.output) < 2100
  endings = run_programs(["import sys\nsys.exit(0)\n",  # exiting early is not passing
                          "import os\nos._exit(0)\n",  # no verdict written
                          "def f(:\n",
                          "input()\n",  # stdin is empty
                          "import os\nos.remove('no-such-file')\n"],  # guarded: not found
                         workers=4, timeout_s=5.0, memory_mb=512)
  assert [(r.status, r.detail.split(" (")[0].split(":")[0]) for r in endings] == [
      ("failed", "SystemExit"), ("crashed", "exited with code 0 without a verdict"),
      ("failed", "SyntaxError"), ("failed", "EOFError"), ("failed", "PermissionError")]


def test_sandbox_rejects_bad_limits():
  with pytest.raises(ConfigError, match="memory_mb"):
    run_program("", memory_mb=8)
  with pytest.raises(ConfigError, match="timeout_s"):
    run_program("", timeout_s=0)
  with pytest.raises(ConfigError, match="network mode"):
    run_program("", network="host")


# --- harness --------------------------------------------------------------------------------

def test_evaluate_code_gives_the_exact_pass_at_k(humaneval):
  ids = [f"HumanEval/{i}" for i in range(4)]
  ref = {humaneval[t].prompt: humaneval[t].reference for t in ids}
  prompts_seen = []

  def generate(prompts, num_samples):
    prompts_seen.extend(prompts)
    a, b, c, d = (ref[p] for p in prompts)
    return [[a, a],
            [b + "\nprint(undefined)\n", b],  # the tail after the stop sequence is cut
            [c, "    return 0\n"],
            [None, None]]  # not generated (e.g. too long for the model): wrong, not run

  out = evaluate_code(generate, "humaneval", num_samples=2, ks=(1, 2), limit=4, timeout_s=10.0,
                      memory_mb=512, workers=4)
  assert prompts_seen == [humaneval[t].prompt for t in ids]
  assert out["pass@1"] == pytest.approx((1 + 1 + 0.5 + 0) / 4)
  assert out["pass@2"] == pytest.approx((1 + 1 + 1 + 0) / 4)
  assert [q["num_correct"] for q in out["problems"]] == [2, 2, 1, 0]
  assert out["problems"][1]["samples"][0]["completion"] == ref[prompts_seen[1]]
  assert out["statuses"] == {"passed": 5, "failed": 1, "skipped": 2}
  assert out["problems_skipped"] == 1 and out["num_problems"] == 4
  assert out["sandbox_backend"] == [sandbox_bwrap.choose("auto")[0]]  # bwrap where it works


def test_evaluate_code_on_mbpp_and_bad_generators(mbpp):
  ref = {p.prompt: p.reference for p in mbpp.values()}
  out = evaluate_code(lambda ps, n: [[ref[ps[0]]], ["def nothing(): pass\n"]], "mbpp",
                      num_samples=1, ks=(1,), limit=2, timeout_s=10.0, memory_mb=512)
  assert out["pass@1"] == 0.5 and [q["task_id"] for q in out["problems"]] == ["MBPP/11", "MBPP/12"]
  called = []
  with pytest.raises(ConfigError, match="needs 1 <= k <= code.num_samples=2"):
    evaluate_code(lambda ps, n: called.append(1), "mbpp", num_samples=2, ks=(1, 5), limit=1)
  assert not called  # rejected before generating
  with pytest.raises(ConfigError, match="a list of 2 completion strings"):
    evaluate_code(lambda ps, n: [["only one"] for _ in ps], "mbpp", num_samples=2, ks=(1,),
                  limit=1)


def test_code_config_checks_run_before_any_model_is_loaded(tmp_path):
  # Greedy decoding (the default temperature 0): ten identical samples would make pass@10 =
  # pass@1. The default config itself asks for one greedy sample and pass@1.
  ten = {"code.num_samples": 10, "code.pass_at_k": (1, 10)}
  assert check_code_config(tiny_config()) == (1,)
  with pytest.raises(ConfigError, match="samples would all be the same"):
    code_command(tiny_config(**ten), str(tmp_path))  # an empty workdir: loading would fail
  cfg = tiny_config(**{"objectives": ("mdm",), "sample.remasking": "random", **ten})
  assert check_code_config(cfg) == (1, 10)  # random unmasking order gives distinct samples
  cfg = tiny_config(**{"sample.temperature": 0.8, "code.num_samples": 10,
                       "code.pass_at_k": (1, 20)})
  with pytest.raises(ConfigError, match=r"pass_at_k=\(1, 20\) needs 1 <= k <= code.num_samples"):
    check_code_config(cfg)
  with pytest.raises(ConfigError, match="unknown code benchmark"):
    check_code_config(tiny_config(**{"code.benchmark": "apps", "code.num_samples": 1,
                                     "code.pass_at_k": (1,)}))


def test_code_command_scores_each_checkpoint_and_skips_prompts_too_long(tmp_path):
  """code_command generates from the saved checkpoint as generate_text does from the same
  parameters, skips the prompts that do not fit the window, and writes the full results."""
  from dlmscale import experiment  # noqa: PLC0415  (heavy: prepares the corpus)
  from dlmscale.sampling import generate_text  # noqa: PLC0415
  # seq_len 160 holds MBPP/11 (146 bytes) and MBPP/14 (108) with 8 new tokens, not 12 or 13.
  cfg = tiny_config(**{"objectives": ("mdm",), "data.seq_len": 160, "data.total_tokens": 8192,
                       "sample.max_new_tokens": 8, "sample.steps": 4, "sample.temperature": 0.8,
                       "sample.seed": 3, "code.benchmark": "mbpp", "code.limit": 4,
                       "code.num_samples": 2, "code.pass_at_k": (1, 2)})
  exp = experiment.build_experiment(cfg, "mdm")
  state = jax.jit(lambda: train.init_state(exp.model, exp.optimizer, 1),
                  out_shardings=exp.shardings)()
  checkpointer = Checkpointer(os.path.join(tmp_path, "mdm", "checkpoints"), keep=1,
                              async_save=False)
  checkpointer.save(0, state, {})
  checkpointer.close()
  problems = load_problems("mbpp", limit=4)
  expected = generate_text(experiment.loaded_model(exp, state["params"]),
                           [problems[0].prompt, problems[3].prompt], max_new_tokens=8,
                           num_samples=2, temperature=0.8, steps=4, stop=MBPP_STOPS, seed=3,
                           batch_size=cfg.eval.batch_size)
  [summary] = code_command(cfg, str(tmp_path))
  assert (summary["objective"], summary["kind"], summary["step"]) == ("mdm", "dlm", 0)
  assert summary["problems_skipped"] == 2 and summary["statuses"].get("skipped") == 4
  with open(summary["results"]) as fh:
    report = json.load(fh)
  assert summary["results"] == os.path.join(tmp_path, "mdm", "eval", "code_mbpp_step0.json")
  completions = [[smp["completion"] for smp in q["samples"]] for q in report["problems"]]
  assert completions == [expected[0], [None, None], [None, None], expected[1]]
  assert summary["pass@1"] == sum(q["num_correct"] for q in report["problems"]) / 8
