"""WinoGrande (Hugging Face `winogrande` schema), lm-eval's partial scoring.

Each option fills the blank and ends its context there; both options score the same
continuation, the rest of the sentence, so the comparison is over identical tokens. acc_norm
therefore equals acc (every option divides by the same length)."""
from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.base import Example, Task, load_split_task

DEFAULT = "hf_datasets/winogrande/winogrande_xl/validation"
ANSWERS = {"1": 0, "2": 1}


def example(doc: dict) -> Example:
  sentence = files.text(doc, "sentence")
  if sentence.count("_") != 1:
    raise files.RowError("field 'sentence' needs exactly one '_' blank; fix the row")
  blank = sentence.index("_")
  options = [files.text(doc, "option1"), files.text(doc, "option2")]
  answer = str(doc.get("answer"))
  if answer not in ANSWERS:
    raise files.RowError(f"label 'answer'={doc.get('answer')!r} is not '1' or '2'; fix the row")
  target = sentence[blank + 1:].strip()
  return Example(contexts=tuple(sentence[:blank] + o for o in options),
                 continuations=(" " + target,), gold=ANSWERS[answer],
                 choice_lengths=(len(target),) * 2)


def load(path: str | None = None) -> Task:
  return load_split_task("winogrande", "multiple_choice", example, path or files.packaged(DEFAULT),
                         split="validation")
