"""ARC-Easy / -Challenge (Hugging Face `ai2_arc` schema): "Question: {q}\\nAnswer:" + " choice"."""
from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.base import Task, choice_example, load_split_task

DEFAULTS = {"arc_easy": "hf_datasets/ai2_arc/ARC-Easy/validation",
            "arc_challenge": "hf_datasets/ai2_arc/ARC-Challenge/validation"}


def keyed_choices(doc: dict) -> tuple[list[str], int]:
  """The choice texts and the gold index of a {choices: {text, label}, answerKey} row."""
  choices = doc.get("choices")
  if not isinstance(choices, dict):
    raise files.RowError("missing field 'choices' ({text: [...], label: [...]}); fix the row")
  texts, labels = files.texts(choices, "text"), files.texts(choices, "label")
  key = files.text(doc, "answerKey").lstrip()
  if len(texts) != len(labels) or key not in labels:
    raise files.RowError(f"answerKey {key!r} is not one of the choice labels {labels}; "
                         "fix the row")
  return texts, labels.index(key)


def example(doc: dict):
  texts, gold = keyed_choices(doc)
  return choice_example(f"Question: {files.text(doc, 'question')}\nAnswer:", texts, gold)


def load(name: str, path: str | None = None) -> Task:
  return load_split_task(name, "multiple_choice", example, path or files.packaged(DEFAULTS[name]),
                         split="test")
