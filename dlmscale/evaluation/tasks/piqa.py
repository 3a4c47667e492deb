"""PIQA (Hugging Face `piqa` schema): "Question: {goal}\\nAnswer:" + " solution"."""
from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.base import Task, choice_example, load_split_task

DEFAULT = "hf_datasets/piqa/plain_text/validation"


def example(doc: dict):
  solutions = [files.text(doc, "sol1"), files.text(doc, "sol2")]
  context = f"Question: {files.text(doc, 'goal')}\nAnswer:"
  return choice_example(context, solutions, files.label(doc.get("label"), 2, "label"))


def load(path: str | None = None) -> Task:
  return load_split_task("piqa", "multiple_choice", example, path or files.packaged(DEFAULT),
                         split="validation")
