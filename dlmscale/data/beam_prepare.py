"""Prepare on Apache Beam: the same shards and meta.json as dlmscale.data.prepare, in parallel.

  prepare_beam(data_cfg, out_dir, "--runner=DirectRunner --direct_num_workers=4 "
               "--direct_running_mode=multi_processing")

Each source is read by one worker (its fingerprint hashes its documents in order); documents are
then tokenized and decontaminated in parallel, with prepare's own per-document function. Packing
is positional instead of sequential: a document's place in its split's token stream is the sum of
the lengths before it, so every worker knows which rows of which shard its tokens fill, and each
shard is assembled and written by one worker. Validation rows found in train are dropped and the
kept rows renumbered into shards the same way. The driver then hashes each split's rows in order
and writes meta.json; the output is byte-identical to the single-process prepare whatever the
runner or worker count. Sources, split, dedupe and decontamination rules are prepare's.

Workers write into the temporary sibling of out_dir; on a cluster they reach out_dir at the Beam
option `--prepared_dir_url` (e.g. gs://bucket/prepared/code when out_dir is
/mnt/bucket/prepared/code, that bucket's gcsfuse mount on the machine that launches the job).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import shlex
import tempfile
import time

import numpy as np
from etils import epath

from dlmscale.data.dedupe import check_val_kept, row_keys
from dlmscale.data.errors import DataError
from dlmscale.data.packing import token_dtype
from dlmscale.data.prepare import (SplitCounts, assemble_meta, batch_documents, check_documents,
                                   check_sequences, load_tokenizer, make_decontaminator,
                                   prepare_atomically, source_documents, tokenize_task_fn)
from dlmscale.data.prepare_spec import PrepareSpec
from dlmscale.data.shards import WRITER_OPTIONS, PreparedSplit, rows_digest, shard_name
from dlmscale.optional import require

log = logging.getLogger("dlmscale")
SPLITS = ("train", "val")
SUMMARY_FILE = "beam-summary.json"
# Document keys: source index in the high bits, document index in the low 40.
_DOC_BITS = 40
_EXAMPLE = "--runner=DirectRunner --direct_num_workers=4 --direct_running_mode=multi_processing"


def _beam():
  return require("apache_beam", "beam", "prepare on Apache Beam (--prepare_engine=beam)")


_OPTIONS_CLASS: list = []


def _options_class():
  """PipelineOptions plus --prepared_dir_url; defined once (Beam collects every subclass)."""
  if not _OPTIONS_CLASS:
    po = require("apache_beam.options.pipeline_options", "beam", "prepare on Apache Beam")

    class PrepareOptions(po.PipelineOptions):
      @classmethod
      def _add_argparse_args(cls, parser):
        parser.add_argument("--prepared_dir_url", default=None,
                            help="prepared_dir as workers reach it, e.g. "
                                 "gs://bucket/prepared/code for its gcsfuse mount")

    _OPTIONS_CLASS.append(PrepareOptions)
  return _OPTIONS_CLASS[0]


def pipeline_options(beam_options: str):
  """PipelineOptions from a command-line string; a bad option is a one-line DataError."""
  _beam()
  from apache_beam.options.pipeline_options import StandardOptions  # noqa: PLC0415
  from apache_beam.runners.runner import create_runner  # noqa: PLC0415
  try:
    argv = shlex.split(beam_options or "")
  except ValueError as e:
    raise DataError(f"--beam_options {beam_options!r} does not parse ({e}); quote it as one "
                    f"string, e.g. --beam_options='{_EXAMPLE}'") from None
  options = _options_class()(argv)
  err = io.StringIO()
  try:
    with contextlib.redirect_stderr(err):
      known = options.get_all_options()
  except SystemExit:
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    raise DataError(f"--beam_options: {lines[-1].split(': ', 1)[-1] if lines else 'invalid'}; "
                    f"e.g. --beam_options='{_EXAMPLE}'") from None
  unknown = sorted(set(options.get_all_options(retain_unknown_options=True)) - set(known))
  if unknown:
    raise DataError(f"--beam_options: unknown Beam option(s) {', '.join('--' + u for u in unknown)}"
                    f"; use Beam pipeline options, e.g. '{_EXAMPLE}'")
  try:
    create_runner(options.view_as(StandardOptions).runner or "DirectRunner")
  except ValueError as e:
    raise DataError(f"--beam_options: {str(e).split('. ', 1)[0]}; use e.g. --runner=DirectRunner, "
                    f"DataflowRunner, FlinkRunner or SparkRunner") from None
  return options


def prepare_beam(data_cfg, out_dir: str, beam_options: str = "",
                 records_per_shard: int = 65536) -> dict:
  """prepare(data_cfg, out_dir) run as a Beam pipeline; returns meta.json's dict."""
  options = pipeline_options(beam_options)

  def check():
    if records_per_shard < 1:
      raise DataError(f"data.records_per_shard must be >= 1, got {records_per_shard}")

  return prepare_atomically(data_cfg, out_dir,
                            lambda spec, tmp: _prepare_into(spec, tmp, options, records_per_shard),
                            check)


# ---- pure helpers (tested without Beam) -------------------------------------------------------
def chunk_pieces(start: int, values, chunk: int, limit: int):
  """(chunk index, offset in chunk, piece) for `values` placed at [start, start + len) of a
  stream cut into chunks of `chunk` items; items at or past `limit` are dropped."""
  end = min(start + len(values), limit)
  at = start
  while at < end:
    k, offset = divmod(at, chunk)
    stop = min(end, (k + 1) * chunk)
    yield k, offset, values[at - start:stop - start]
    at = stop


def assemble(pieces, size: int, like) -> np.ndarray:
  """The chunk of `size` items that `pieces` [(offset, piece)] tile exactly."""
  out = np.zeros((size, *np.shape(like)[1:]), dtype=np.asarray(like).dtype)
  filled = 0
  for offset, piece in pieces:
    out[offset:offset + len(piece)] = piece
    filled += len(piece)
  if filled != size:  # pieces come from disjoint ranges: a gap would mean lost tokens
    raise RuntimeError(f"chunk of {size} items got {filled} from its pieces")
  return out


def layout(lengths, n_sources: int, seq_len: int) -> dict:
  """Where each document starts in its split's stream, from [(key, split, bytes, tokens)].

  tokens is a document's length including its eod, or -1 when decontamination dropped it.
  """
  arr = np.array([(k, SPLITS.index(s), b, n) for batch in lengths for k, s, b, n in batch],
                 dtype=np.int64).reshape(-1, 4)
  arr = arr[np.argsort(arr[:, 0], kind="stable")]
  kept = arr[:, 3] >= 0
  out = {"total_bytes": int(arr[:, 2].sum()), "splits": {},
         "contaminated": np.bincount(arr[~kept, 0] >> _DOC_BITS,
                                     minlength=n_sources).tolist()}
  for code, split in enumerate(SPLITS):
    docs = arr[kept & (arr[:, 1] == code)]
    ends = np.cumsum(docs[:, 3])
    tokens = int(ends[-1]) if len(ends) else 0
    out["splits"][split] = {"keys": docs[:, 0], "starts": ends - docs[:, 3],
                            "num_documents": len(docs), "num_tokens": tokens,
                            "rows": tokens // seq_len}
  return out


def split_counts(lay: dict, seq_len: int) -> dict:
  """Packer's counts per split, from a layout (or the summary's copy of its counts)."""
  return {s: SplitCounts(m["num_documents"], m["num_tokens"], m["num_tokens"] % seq_len)
          for s, m in lay["splits"].items()}


def write_shard(directory: str, split: str, index: int, rows_RxL: np.ndarray) -> dict:
  """One ArrayRecord shard of rows, as ShardWriter writes it, into a local or cloud directory
  (ArrayRecord writes local files: the shard is written on the worker's disk, then copied).
  Returns the shard's meta."""
  from array_record.python import array_record_module  # noqa: PLC0415  (heavy native module)
  name = shard_name(split, index)
  with tempfile.TemporaryDirectory() as local:
    path = os.path.join(local, name)
    writer = array_record_module.ArrayRecordWriter(path, WRITER_OPTIONS)
    for row_L in rows_RxL.astype(rows_RxL.dtype.newbyteorder("<"), copy=False):
      writer.write(row_L.tobytes())
    writer.close()
    nbytes = os.path.getsize(path)
    epath.Path(path).copy(epath.Path(directory) / name, overwrite=True)
  return {"file": name, "num_records": len(rows_RxL), "bytes": nbytes}


# ---- pipeline stages --------------------------------------------------------------------------
def _read_source(i: int, spec: PrepareSpec):
  """Source i's documents in ~1 MB batches keyed by (source, index); its stats at the end."""
  beam = _beam()
  per_source: list[dict] = []
  docs = (((i << _DOC_BITS) | j, split, text, nbytes)
          for j, (_, split, text, nbytes) in enumerate(source_documents(spec, i, per_source)))
  yield from batch_documents(docs)
  yield beam.pvalue.TaggedOutput("sources", (i, per_source[0]))


class _Tokenize:
  """prepare's per-document function (decontaminate, then tokenize), built once per worker."""

  def __init__(self, tok, decontaminator):
    self._args = (tok, decontaminator)
    self._fn = None

  def __call__(self, batch):
    if self._fn is None:
      self._fn = tokenize_task_fn(*self._args)
    return self._fn(batch)


def _lengths(results):
  return [(k, s, b, -1 if ids is None else len(ids) + 1) for (k, s, b), ids in results]


def _token_pieces(results, lay, eod_id: int, dtype, chunk_rows: int, seq_len: int):
  """((split, shard), (offset, tokens)) for every shard a document's tokens + eod fall in."""
  for (key, split, _), ids_T in results:
    if ids_T is None:
      continue
    m = lay["splits"][split]
    start = int(m["starts"][np.searchsorted(m["keys"], key)])
    stream_T = np.concatenate([np.asarray(ids_T).astype(dtype), np.array([eod_id], dtype)])
    for k, offset, piece in chunk_pieces(start, stream_T, chunk_rows * seq_len,
                                         m["rows"] * seq_len):
      yield (split, k), (offset, piece)


def _assemble_tokens(item, lay, dtype, chunk_rows: int, seq_len: int):
  (split, k), pieces = item
  rows = min(chunk_rows, lay["splits"][split]["rows"] - k * chunk_rows)
  tokens = assemble(pieces, rows * seq_len, np.zeros(0, dtype))
  return split, k, tokens.reshape(rows, seq_len)


def _key_set(keys_Rx2: np.ndarray) -> set:
  return set(map(tuple, keys_Rx2.tolist()))


def _union(sets) -> set:
  return set().union(*sets)


def _write_train(chunk, directory: str, val_keys: set):
  """Writes a train shard; returns its meta and its row keys that are validation keys too."""
  _, k, rows_RxL = chunk
  meta = write_shard(directory, "train", k, rows_RxL)
  return meta, [key for key in map(tuple, row_keys(rows_RxL).tolist()) if key in val_keys]


def _keep_val(chunk, in_train: set):
  _, k, rows_RxL = chunk
  keep_R = np.array([key not in in_train for key in map(tuple, row_keys(rows_RxL).tolist())],
                    dtype=bool)
  return k, rows_RxL[keep_R.reshape(-1)]


def _kept_starts(counts) -> dict:
  """Chunk index -> index of its first kept validation row; None -> kept rows in all."""
  out, at = {}, 0
  for k, n in sorted(counts):
    out[k] = at
    at += n
  out[None] = at
  return out


def _row_pieces(kept, starts: dict, chunk_rows: int):
  k, rows_RxL = kept
  for j, offset, piece in chunk_pieces(starts[k], rows_RxL, chunk_rows, starts[None]):
    yield j, (offset, piece)


def _write_val(item, starts: dict, directory: str, chunk_rows: int, like):
  j, pieces = item
  rows = min(chunk_rows, starts[None] - j * chunk_rows)
  return write_shard(directory, "val", j, assemble(pieces, rows, like))


def _summary(_, directory, sources, lay, train_shards, val_shards, val_rows_kept):
  """What the driver needs for meta.json, written beside the shards."""
  splits = {s: {k: m[k] for k in ("num_documents", "num_tokens", "rows")}
            for s, m in lay["splits"].items()}
  summary = {"sources": [s for _, s in sorted(sources)], "total_bytes": lay["total_bytes"],
             "contaminated": lay["contaminated"], "splits": splits,
             "shards": {"train": sorted(train_shards, key=lambda m: m["file"]),
                        "val": sorted(val_shards, key=lambda m: m["file"])},
             "val_rows_kept": val_rows_kept}
  (epath.Path(directory) / SUMMARY_FILE).write_text(json.dumps(summary))


def _build(p, spec: PrepareSpec, tok, decontaminator, directory: str, chunk_rows: int):
  """The pipeline's graph; its only output is the shard files and the summary file."""
  beam = _beam()
  AsSingleton, AsList = beam.pvalue.AsSingleton, beam.pvalue.AsList  # noqa: N806
  L, dtype = spec.seq_len, token_dtype(tok.vocab_size)
  read = (p | "sources" >> beam.Create(range(len(spec.sources)))
          | "spread sources" >> beam.Reshuffle()
          | "read" >> beam.FlatMap(_read_source, spec).with_outputs("sources", main="docs"))
  results = (read.docs | "spread documents" >> beam.Reshuffle()
             | "tokenize" >> beam.Map(_Tokenize(tok, decontaminator)))
  lay = (results | "lengths" >> beam.Map(_lengths)
         | "all lengths" >> beam.combiners.ToList()
         | "layout" >> beam.Map(layout, len(spec.sources), L))
  chunks = (results
            | "token pieces" >> beam.FlatMap(_token_pieces, AsSingleton(lay), tok.eod_id, dtype,
                                             chunk_rows, L)
            | "by shard" >> beam.GroupByKey()
            | "rows" >> beam.Map(_assemble_tokens, AsSingleton(lay), dtype, chunk_rows, L))
  train, val = chunks | "by split" >> beam.Partition(lambda c, _: SPLITS.index(c[0]), 2)
  val_keys = (val | "val keys" >> beam.Map(lambda c: _key_set(row_keys(c[2])))
              | "val key set" >> beam.CombineGlobally(_union))
  written = train | "write train" >> beam.Map(_write_train, directory, AsSingleton(val_keys))
  in_train = (written | "found" >> beam.Map(lambda w: set(w[1]))
              | "found set" >> beam.CombineGlobally(_union))
  kept = val | "dedupe" >> beam.Map(_keep_val, AsSingleton(in_train))
  starts = (kept | "kept counts" >> beam.Map(lambda c: (c[0], len(c[1])))
            | "all counts" >> beam.combiners.ToList() | "starts" >> beam.Map(_kept_starts))
  like = np.zeros((0, L), dtype)
  val_shards = (kept | "val pieces" >> beam.FlatMap(_row_pieces, AsSingleton(starts), chunk_rows)
                | "by val shard" >> beam.GroupByKey()
                | "write val" >> beam.Map(_write_val, AsSingleton(starts), directory, chunk_rows,
                                          like))
  _ = (p | "once" >> beam.Create([None])
       | "summary" >> beam.Map(_summary, directory, AsList(read.sources), AsSingleton(lay),
                               AsList(written | "train metas" >> beam.Map(lambda w: w[0])),
                               AsList(val_shards),
                               AsSingleton(starts | "kept" >> beam.Map(lambda s: s[None]))))


def _prepare_into(spec: PrepareSpec, tmp: str, options, chunk_rows: int) -> dict:
  beam = _beam()
  start = time.time()
  directory = worker_dir(tmp, options.get_all_options().get("prepared_dir_url"))
  decontaminator = make_decontaminator(spec)
  tok = load_tokenizer(spec, decontaminator, tmp)
  beam_log = logging.getLogger("apache_beam")
  level = beam_log.level
  # The runner logs a worker's exception with its traceback before re-raising it, wrapped:
  # the unwrapped message below is the one line a user needs.
  beam_log.setLevel(logging.CRITICAL)
  try:
    with beam.Pipeline(options=options) as p:
      _build(p, spec, tok, decontaminator, directory, chunk_rows)
  except Exception as e:  # noqa: BLE001  (runners wrap worker errors in their own types)
    raise _worker_error(e) from None
  finally:
    beam_log.setLevel(level)
  summary_path = os.path.join(tmp, SUMMARY_FILE)
  with open(summary_path) as f:
    summary = json.load(f)
  os.remove(summary_path)
  per_source = summary["sources"]
  counts = split_counts(summary, spec.seq_len)
  check_documents(spec, per_source)
  check_sequences(spec, {s: {"num_sequences": m["rows"]} for s, m in summary["splits"].items()},
                  counts)
  check_val_kept(summary["val_rows_kept"])
  dtype = token_dtype(tok.vocab_size)
  split_metas = {s: _split_meta(tmp, s, summary["shards"][s], spec.seq_len, dtype)
                 for s in SPLITS}
  dropped = summary["splits"]["val"]["rows"] - summary["val_rows_kept"]
  wall = time.time() - start
  log.info("prepared %.1f MB of text on Beam in %.1f s (%.1f MB/s)", summary["total_bytes"] / 1e6,
           wall, summary["total_bytes"] / 1e6 / max(wall, 1e-9))
  return assemble_meta(spec, tok, decontaminator, per_source, summary["contaminated"],
                       summary["total_bytes"], split_metas, counts, dropped)


def worker_dir(tmp: str, prepared_dir_url: str | None) -> str:
  """Where workers write: tmp, or its sibling under the URL at which they reach prepared_dir."""
  if not prepared_dir_url:
    return tmp
  parent, _, name = prepared_dir_url.rstrip("/").rpartition("/")
  expected = os.path.basename(tmp)[1:].rsplit(".tmp-", 1)[0]
  if not parent or name != expected:
    raise DataError(f"--prepared_dir_url={prepared_dir_url} must end in prepared_dir's folder "
                    f"name {expected!r} (it is prepared_dir as workers see it); fix it, or drop "
                    f"it when workers share prepared_dir's filesystem")
  return f"{parent}/{os.path.basename(tmp)}"


def _split_meta(tmp: str, split: str, shards: list[dict], seq_len: int, dtype) -> dict:
  """ShardWriter's meta for shards written elsewhere: the rows hashed in order, once."""
  meta = {"num_sequences": sum(s["num_records"] for s in shards), "shards": shards}
  h = None
  for block in PreparedSplit(tmp, split, meta | {"fingerprint": ""}, seq_len,
                             np.dtype(dtype).name).iter_blocks():
    h = rows_digest(block, h)
  meta["fingerprint"] = (h or rows_digest(np.zeros((0, seq_len)))).hexdigest()
  return meta


def _worker_error(e: Exception) -> Exception:
  """A DataError raised on a worker comes back wrapped by the runner: unwrap its message."""
  text = str(e)
  marker = "DataError: "
  if marker in text:
    return DataError(text.rsplit(marker, 1)[1].splitlines()[0].strip())
  return e
