"""LAMBADA (OpenAI's release): predict a passage's last word; greedy accuracy and perplexity.

Rows are either {"text": passage} (lambada_openai JSONL / Arrow), split at the last space as
lm-eval does, or oe-eval docs {"query": passage without the word, "answers_text": [word]}."""
from dlmscale.evaluation.tasks import files
from dlmscale.evaluation.tasks.base import Example, Task, load_split_task

DEFAULT = "oe_eval_tasks/lambada/bpb_0shot/requests.jsonl.gz"


def example(doc: dict) -> Example:
  if "text" in doc:
    context, _, word = files.text(doc, "text").rpartition(" ")
  else:
    context, word = files.text(doc, "query"), files.texts(doc, "answers_text")[0]
  if not context or not word:
    raise files.RowError("passage has no last word to predict; fix the row")
  return Example(contexts=(context,), continuations=(" " + word,), gold=0,
                 choice_lengths=(len(word),))


def load(path: str | None = None) -> Task:
  return load_split_task("lambada", "loglikelihood", example, path or files.packaged(DEFAULT),
                         split="test")
