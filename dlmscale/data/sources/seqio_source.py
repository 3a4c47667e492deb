"""A seqio Task or Mixture's raw text, before its preprocessors tokenize it.

`seqio:<task or mixture>?split=train&text_field=text&module=<python module>[,<module>...]`

- module: modules imported first so their `seqio.TaskRegistry.add` calls register the name.
- Documents come from `task.source.get_dataset(split, shuffle=False)`: the source's raw examples,
  not `task.get_dataset`, whose preprocessors tokenize with the task's own vocabulary (this
  library tokenizes with its own). So text_field names a field of the raw examples (often
  `text`, even where a preprocessor later renames it `targets`). A source yielding bare strings
  (seqio.TextLineDataSource) gives each line, and text_field is not used.
- A Mixture is its sub-tasks read one after another, sorted by task name, each whole: mixing
  rates shape a sampled stream, while here they would only decide which documents exist, so
  rates are ignored (list tasks as separate sources to choose what goes in).
Names are `<task>/<split>/<index>`. seqio needs TensorFlow (an optional extra, ~2 GB).
"""
import importlib
from typing import Iterator

from dlmscale.data.errors import DataError
from dlmscale.data.sources.base import Document, SourceContext, as_text, register
from dlmscale.data.spec import Spec, take_options

_DEFAULTS = {"split": "train", "text_field": "text", "module": ""}


def _import_seqio():
  try:
    import seqio  # pylint: disable=g-import-not-at-top
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise DataError("source kind seqio needs seqio and TensorFlow: pip install 'dlmscale[seqio]'"
                    ) from None
  return seqio, tf


def _tasks(spec: Spec, seqio, modules: str) -> list:
  """The Task, or a Mixture's tasks sorted by name."""
  for module in filter(None, (m.strip() for m in modules.split(","))):
    try:
      importlib.import_module(module)
    except ImportError as e:
      raise DataError(f"source {spec}: cannot import module {module!r} ({e}); check module= "
                      f"names a module that registers the task") from None
  try:
    task_or_mixture = seqio.get_mixture_or_task(spec.target)
  except ValueError as e:
    raise DataError(f"source {spec}: no seqio task or mixture {spec.target!r} ({e}); add "
                    f"module=<the module that registers it>") from None
  if isinstance(task_or_mixture, seqio.Mixture):
    # A task reached through two sub-mixtures is still read once.
    by_name = {t.name: t for t in task_or_mixture.tasks}
    return [by_name[name] for name in sorted(by_name)]
  return [task_or_mixture]


@register("seqio")
def seqio_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """(`<task>/<split>/<index>`, raw text) of every example, tasks in name order."""
  opts = take_options(spec, _DEFAULTS, "source")
  if not spec.target:
    raise DataError(f"source {spec}: name a task or mixture, e.g. seqio:c4_v220_span_corruption")
  seqio, tf = _import_seqio()
  split, field = opts["split"], opts["text_field"]
  for task in _tasks(spec, seqio, opts["module"]):
    source = task.source
    if source.splits and split not in source.splits:
      raise DataError(f"source {spec}: task {task.name} has no split {split!r} (has "
                      f"{sorted(source.splits)}); set split=")
    dataset = source.get_dataset(split=split, shuffle=False)
    options = tf.data.Options()
    options.deterministic = True  # Parallel file interleaving must keep file order.
    for index, example in enumerate(dataset.with_options(options).as_numpy_iterator()):
      where = f"{spec} example {task.name}/{split}/{index}"
      text = _text(example, field, where, ctx)
      if text is None:
        continue
      if not text.strip():
        ctx.stats["empty_skipped"] += 1
        continue
      yield f"{task.name}/{split}/{index}", text


def _text(example, field: str, where: str, ctx: SourceContext) -> str | None:
  if isinstance(example, dict):
    if field not in example:
      raise DataError(f"{where}: no field {field!r} (has {sorted(example)}); set text_field= to "
                      f"the raw text field")
    example = example[field]
  return as_text(example, where, f"field {field!r}", ctx)
