"""OpenBookQA (Hugging Face `openbookqa/main` schema): the bare question stem + " choice"."""
from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.arc import keyed_choices
from dlmscale.evaluation.tasks.base import Task, choice_example

DEFAULT = "hf_datasets/openbookqa/main/validation"


def example(doc: dict):
  texts, gold = keyed_choices(doc)
  return choice_example(files.text(doc, "question_stem"), texts, gold)


def load(path: str | None = None) -> Task:
  rows = files.read_rows(path or files.packaged(DEFAULT))
  return Task("openbookqa", "multiple_choice", tuple(files.convert(rows, example)))
