"""SciQ (Hugging Face `sciq` schema): support, question; the correct answer is the 4th option."""
from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.base import Task, choice_example, load_split_task

DEFAULT = "hf_datasets/sciq/none/validation"
OPTIONS = ("distractor1", "distractor2", "distractor3", "correct_answer")


def example(doc: dict):
  context = (f"{files.text(doc, 'support').lstrip()}\nQuestion: {files.text(doc, 'question')}"
             "\nAnswer:")
  return choice_example(context, [files.text(doc, key) for key in OPTIONS], gold=3)


def load(path: str | None = None) -> Task:
  return load_split_task("sciq", "multiple_choice", example, path or files.packaged(DEFAULT),
                         split="test")
