"""HellaSwag (Hugging Face `hellaswag` schema), formatted as lm-evaluation-harness does."""
import re

from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.base import Task, choice_example, load_split_task

DEFAULT = "hf_datasets/hellaswag/none/validation"


def preprocess(text: str) -> str:
  """Strips WikiHow artifacts: ' [title]' becomes '. ', other [tags] go, double spaces close."""
  text = text.strip().replace(" [title]", ". ")
  text = re.sub(r"\[.*?\]", "", text)
  return text.replace("  ", " ")


def example(doc: dict):
  ctx = files.text(doc, "ctx_a") + " " + files.text(doc, "ctx_b").capitalize()
  query = preprocess(files.text(doc, "activity_label") + ": " + ctx)
  endings = [preprocess(e) for e in files.texts(doc, "endings")]
  return choice_example(query, endings, files.label(doc.get("label"), len(endings), "label"))


def load(path: str | None = None) -> Task:
  return load_split_task("hellaswag", "multiple_choice", example, path or files.packaged(DEFAULT),
                         split="validation")
