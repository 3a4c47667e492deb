"""OpenBookQA (Hugging Face `openbookqa/main` schema): the bare question stem + " choice"."""
from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.arc import keyed_choices
from dlmscale.evaluation.tasks.base import Task, choice_example, load_split_task

DEFAULT = "hf_datasets/openbookqa/main/validation"


def example(doc: dict):
  texts, gold = keyed_choices(doc)
  return choice_example(files.text(doc, "question_stem"), texts, gold)


def load(path: str | None = None) -> Task:
  return load_split_task("openbookqa", "multiple_choice", example, path or files.packaged(DEFAULT),
                         split="test")
