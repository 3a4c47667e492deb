"""TensorFlow Datasets through random-access ArrayRecord data sources (no TensorFlow needed).

`tfds:<name>[/<config>][:<version>]?split=train&text_field=text&data_dir=&download=false`, or
`tfds:<dataset directory>?split=...` (e.g. gs://bucket/tfds/lm1b/1.1.0) to read a prepared
dataset without its builder code. The dataset must be prepared with file_format=array_record
(tfds.data_source's requirement). Records are read in index order, so the order is the
prepared files' order on every machine; names are `<split>/<index>`. download=true lets tfds
download and prepare a missing dataset (off by default: a wrong data_dir should fail, not
start a download).
"""
import os
from typing import Iterator

from dlmscale.data.errors import DataError
from dlmscale.data.sources.base import Document, SourceContext, as_text, register
from dlmscale.data.spec import Spec, take_options
from dlmscale.optional import require

_DEFAULTS = {"split": "train", "text_field": "text", "data_dir": "", "download": False}
_READ_BATCH = 1024


def _import_tfds():
  return require("tensorflow_datasets", "tfds", "source kind tfds")


def _is_directory(target: str) -> bool:
  return target.startswith(("/", "./", "~")) or "://" in target


def _open(spec: Spec, opts: dict):
  """The tfds data source of the split, with errors made one-line DataErrors."""
  tfds = _import_tfds()
  try:
    if _is_directory(spec.target):
      if opts["data_dir"]:
        raise DataError(f"source {spec}: data_dir is for dataset names; a directory target "
                        f"already locates the data, drop data_dir")
      builder = tfds.builder_from_directory(os.path.expanduser(spec.target))
      return builder.as_data_source(split=opts["split"])
    return tfds.data_source(spec.target, split=opts["split"], data_dir=opts["data_dir"] or None,
                            download=opts["download"])
  except DataError:
    raise
  except Exception as e:  # tfds raises many types; the first line says what went wrong.
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    raise DataError(f"source {spec}: tfds could not open it ({first}); check the name, split, "
                    f"data_dir, that it was prepared with file_format=array_record, or set "
                    f"download=true") from None


@register("tfds")
def tfds_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """(`<split>/<index>`, text of `text_field`) for every record, in index order."""
  opts = take_options(spec, _DEFAULTS, "source")
  if not spec.target:
    raise DataError(f"source {spec}: name a dataset, e.g. tfds:lm1b?split=train")
  source = _open(spec, opts)
  split, field = opts["split"], opts["text_field"]
  batched = hasattr(source, "__getitems__")
  for start in range(0, len(source), _READ_BATCH):
    indices = range(start, min(start + _READ_BATCH, len(source)))
    # Batched reads let ArrayRecord fetch many records per call instead of one at a time.
    records = source.__getitems__(list(indices)) if batched else [source[i] for i in indices]
    for index, record in zip(indices, records):
      text = _text(record, field, f"{spec} record {split}/{index}", ctx)
      if text is None:
        continue
      if not text.strip():
        ctx.stats["empty_skipped"] += 1
        continue
      yield f"{split}/{index}", text


def _text(record, field: str, where: str, ctx: SourceContext) -> str | None:
  if not isinstance(record, dict) or field not in record:
    keys = sorted(record) if isinstance(record, dict) else type(record).__name__
    raise DataError(f"{where}: no feature {field!r} (has {keys}); set text_field= to the text "
                    f"feature")
  return as_text(record[field], where, f"feature {field!r}", ctx)
