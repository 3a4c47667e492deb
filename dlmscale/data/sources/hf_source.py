"""Hugging Face datasets: Hub datasets, local data files, or a save_to_disk directory.

`hf:<path or name>?name=&split=train&text_field=text&revision=&data_files=`

- A local directory written by `save_to_disk` (it holds dataset_info.json and state.json for a
  Dataset, or dataset_dict.json for a DatasetDict) is opened with `datasets.load_from_disk`
  (copy one from cloud storage first: only local directories are recognised);
  a DatasetDict gives the `split` member, a plain Dataset is read whole and `split` only names
  its documents.
- Anything else goes to `datasets.load_dataset(target, name=, split=, revision=, data_files=,
  streaming=True)`: Hub datasets stream without a full download, and local files are read with
  a builder, e.g. `hf:json?data_files=/data/a.jsonl,/data/b.jsonl` or `hf:parquet?data_files=...`.
Rows come in the dataset's own order (files in the order given or resolved, rows in file
order), so names `<split>/<index>` are the same on every machine. Null or empty text is skipped
and counted.
"""
import os
from typing import Iterator

from dlmscale.data.errors import DataError
from dlmscale.data.sources.base import Document, SourceContext, decode_utf8, register
from dlmscale.data.spec import Spec, take_options
from dlmscale.optional import require

_DEFAULTS = {"name": "", "split": "train", "text_field": "text", "revision": "",
             "data_files": ""}
_BATCH_ROWS = 1000


def _import_datasets():
  return require("datasets", "hf", "source kind hf")


def saved_kind(target: str) -> str | None:
  """'dataset' or 'dict' for a save_to_disk directory, else None."""
  if not os.path.isdir(target):
    return None
  if os.path.isfile(os.path.join(target, "dataset_dict.json")):
    return "dict"
  if all(os.path.isfile(os.path.join(target, f)) for f in ("dataset_info.json", "state.json")):
    return "dataset"
  return None


def _first_line(e: Exception) -> str:
  return (str(e).strip().splitlines() or [type(e).__name__])[0]


def _open(spec: Spec, opts: dict):
  datasets = _import_datasets()
  kind = saved_kind(os.path.expanduser(spec.target))
  if kind is not None:
    loader_only = [k for k in ("name", "revision", "data_files") if opts[k]]
    if loader_only:
      raise DataError(f"source {spec}: {loader_only[0]} does not apply to a save_to_disk "
                      f"directory; drop it")
    ds = datasets.load_from_disk(os.path.expanduser(spec.target))
    if kind == "dict":
      if opts["split"] not in ds:
        raise DataError(f"source {spec}: no split {opts['split']!r} (has {sorted(ds)}); set "
                        f"split=")
      ds = ds[opts["split"]]
    return ds
  files = [f.strip() for f in opts["data_files"].split(",") if f.strip()]
  try:
    return datasets.load_dataset(spec.target, name=opts["name"] or None, split=opts["split"],
                                 revision=opts["revision"] or None, data_files=files or None,
                                 streaming=True)
  except Exception as e:  # datasets raises many types; the first line says what went wrong.
    raise DataError(f"source {spec}: datasets.load_dataset failed ({_first_line(e)}); check the "
                    f"name, config (name=), split, data_files and network access") from None


@register("hf")
def hf_source(spec: Spec, ctx: SourceContext) -> Iterator[Document]:
  """(`<split>/<index>`, text of `text_field`) for every row, in the dataset's order."""
  opts = take_options(spec, _DEFAULTS, "source")
  if not spec.target:
    raise DataError(f"source {spec}: name a dataset or directory, e.g. hf:wikitext?name="
                    f"wikitext-103-raw-v1")
  ds = _open(spec, opts)
  split, field = opts["split"], opts["text_field"]
  columns = ds.column_names  # None for a streamed dataset whose features are unknown.
  if columns is not None and field not in columns:
    raise DataError(f"source {spec}: no column {field!r} (has {columns}); set text_field= to "
                    f"the text column")
  index = 0
  try:
    for batch in ds.select_columns([field]).iter(batch_size=_BATCH_ROWS):
      for value in batch[field]:
        text = _as_text(value, f"{spec} row {split}/{index}", ctx)
        if text is not None and not text.strip():
          ctx.stats["empty_skipped"] += 1
        elif text is not None:
          yield f"{split}/{index}", text
        index += 1
  except DataError:
    raise
  except Exception as e:  # Streaming reads files lazily, so bad data surfaces only here.
    raise DataError(f"source {spec}: reading row {split}/{index} failed ({_first_line(e)}); "
                    f"check the data files and text_field") from None


def _as_text(value, where: str, ctx: SourceContext) -> str | None:
  if value is None or isinstance(value, str):
    return value or ""
  if isinstance(value, bytes):
    return decode_utf8(value, where, ctx)
  raise DataError(f"{where}: column holds {type(value).__name__}, not a string; point "
                  f"text_field= at a string column")
