"""Prepare: documents -> tokens -> packed [seq_len] rows -> ArrayRecord shards + meta.json.

Streaming (memory does not grow with the corpus), deterministic (the same config gives
byte-identical shards, whatever the worker count) and atomic (everything is written into a
temporary sibling directory that is renamed into place only when complete).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import uuid

import numpy as np

from dlmscale.data import sources as sources_lib
from dlmscale.data import tokenizers as tokenizers_lib
from dlmscale.data.errors import DataError
from dlmscale.data.packing import Packer, is_validation, token_dtype
from dlmscale.data.shards import ShardWriter
from dlmscale.data.dedupe import dedupe_validation, row_keys
from dlmscale.data.prepare_spec import (FORMAT_VERSION, PrepareSpec, check_same_spec,
                                        split_group)
from dlmscale.data.spec import parse_spec
from dlmscale.data.workers import ordered_map
from dlmscale.progress import Progress

log = logging.getLogger("dlmscale")
META_FILE = "meta.json"
# Documents per worker task: large enough to amortise inter-process transfer, small enough
# to keep the in-flight window (workers x 4 tasks) a few MB.
_TASK_CHARS = 1 << 20


def _documents(spec: PrepareSpec, per_source: list[dict]):
  """(source index, split, text, UTF-8 bytes) for every document of every source, in order."""
  for i in range(len(spec.sources)):
    yield from source_documents(spec, i, per_source)


def source_documents(spec: PrepareSpec, i: int, per_source: list[dict]):
  """(i, split, text, UTF-8 bytes) for source i's documents; appends its stats when done."""
  src = spec.sources[i]
  ctx = sources_lib.SourceContext(on_decode_error=spec.on_decode_error)
  kind = parse_spec(src).kind
  h = hashlib.sha256()
  count = chars = 0
  for name, text in sources_lib.iter_documents(src, ctx):
    raw = text.encode("utf-8", "surrogatepass")
    h.update(name.encode("utf-8", "surrogatepass") + b"\x00")
    h.update(raw + b"\x00")
    count += 1
    chars += len(text)
    # Kind-prefixed names keep two sources' identical relative paths apart.
    group = split_group(name, spec.split_unit)
    held_out = is_validation(f"{kind}:{group}", spec.val_fraction, spec.split_seed)
    yield i, "val" if held_out else "train", text, len(raw)
  per_source.append({"spec": src, "num_documents": count, "num_chars": chars,
                     "num_undecodable_skipped": ctx.stats["undecodable_skipped"],
                     "stats": dict(sorted(ctx.stats.items())), "fingerprint": h.hexdigest()})


def tokenize_task_fn(tokenizer, decontaminator):
  """Builds the per-worker function: [(meta, text)] -> [(meta, ids or None if contaminated)]."""
  def run(task):
    out = []
    for meta, text in task:
      if decontaminator is not None and decontaminator.is_contaminated(text):
        out.append((meta, None))
      else:
        out.append((meta, tokenizer.encode(text)))
    return out
  return run


def batch_documents(docs):
  """Documents in lists of ~_TASK_CHARS characters: ((i, split, bytes), text) each."""
  task, size = [], 0
  for i, split, text, nbytes in docs:
    task.append(((i, split, nbytes), text))
    size += len(text)
    if size >= _TASK_CHARS:
      yield task
      task, size = [], 0
  if task:
    yield task


def make_decontaminator(spec: PrepareSpec):
  if not spec.decontaminate:
    return None
  from dlmscale.data.decontaminate import Decontaminator  # noqa: PLC0415  (reads benchmarks)
  return Decontaminator.from_benchmarks(spec.decontaminate, ngram=spec.decontaminate_ngram)


def _train_texts(spec: PrepareSpec, decontaminator):
  for _, split, text, _ in _documents(spec, []):
    if split == "train" and not (decontaminator and decontaminator.is_contaminated(text)):
      yield text


def check_local(directory: str) -> None:
  """Shards are written and renamed with POSIX calls: cloud URLs would become local folders."""
  if "://" in directory:
    raise DataError(f"prepared_dir {directory!r} is a URL; prepared data lives on a local or "
                    f"mounted filesystem (e.g. a gcsfuse mount of the bucket)")


def read_meta(directory: str) -> dict | None:
  path = os.path.join(directory, META_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, json.JSONDecodeError) as e:
    raise DataError(f"{path} is unreadable ({e}); re-run prepare into a fresh "
                    f"prepared_dir") from None


def prepare(data_cfg, out_dir: str, workers: int = 1, records_per_shard: int = 65536) -> dict:
  """Prepares the corpus of `data_cfg` into out_dir (atomically); returns meta.json's dict.

  An existing out_dir prepared from the same spec is reused as is; one prepared from another
  spec is an error, never overwritten.
  """
  def check():
    if workers < 1:
      raise DataError(f"data.workers must be >= 1, got {workers}")
  return prepare_atomically(
      data_cfg, out_dir, lambda spec, tmp: _prepare_into(spec, tmp, workers, records_per_shard),
      check)


def prepare_atomically(data_cfg, out_dir: str, build, check=lambda: None) -> dict:
  """Runs `build(spec, tmp) -> meta` into a temporary sibling of out_dir, renamed into place.

  Shared by the engines (this module's processes, dlmscale.data.beam_prepare): the reuse of a
  matching out_dir, the refusal of another spec's, and the cleanup after a failure. `check`
  validates engine arguments once out_dir is known to need preparing.
  """
  spec = PrepareSpec.from_config(data_cfg)
  check_local(out_dir)
  existing = read_meta(out_dir)
  if existing is not None:
    check_same_spec(existing, spec, out_dir)
    return existing
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise DataError(f"{out_dir} exists, is not empty and has no {META_FILE}; choose an empty "
                    f"or new prepared_dir")
  check()
  parent = os.path.dirname(os.path.abspath(out_dir))
  created = _makedirs(parent)
  tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    meta = build(spec, tmp)
    _write_json_atomic(os.path.join(tmp, META_FILE), meta)
    try:
      if os.path.isdir(out_dir) and not os.listdir(out_dir):
        os.rmdir(out_dir)
      os.rename(tmp, out_dir)
    except OSError:
      # Another process prepared the same directory first; keep theirs if it matches.
      if read_meta(out_dir) is None:
        raise
      check_same_spec(read_meta(out_dir), spec, out_dir)
      shutil.rmtree(tmp, ignore_errors=True)
      return read_meta(out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    for d in reversed(created):  # a failed prepare leaves the filesystem as it found it
      try:
        os.rmdir(d)
      except OSError:
        break
    raise
  return meta


def _makedirs(path: str) -> list[str]:
  """os.makedirs that returns the directories it created, outermost first."""
  missing = []
  while not os.path.isdir(path):
    missing.append(path)
    path = os.path.dirname(path)
  missing.reverse()
  for d in missing:
    os.makedirs(d, exist_ok=True)
  return missing


def load_tokenizer(spec: PrepareSpec, decontaminator, tmp: str):
  """The spec's tokenizer; one that needs training is trained on the train split, into tmp."""
  if tokenizers_lib.needs_training(spec.tokenizer):
    log.info("training tokenizer %s on the train split", spec.tokenizer)
    return tokenizers_lib.train_tokenizer(spec.tokenizer, _train_texts(spec, decontaminator), tmp)
  return tokenizers_lib.get_tokenizer(spec.tokenizer)


def _prepare_into(spec: PrepareSpec, tmp: str, workers: int, records_per_shard: int) -> dict:
  start = time.time()
  decontaminator = make_decontaminator(spec)
  tok = load_tokenizer(spec, decontaminator, tmp)
  tokenizer_s = time.time() - start
  dtype = token_dtype(tok.vocab_size)
  writers = {"train": ShardWriter(tmp, "train", spec.seq_len, dtype, records_per_shard),
             "valtmp": ShardWriter(tmp, "valtmp", spec.seq_len, dtype, records_per_shard)}
  packers = {s: Packer(spec.seq_len, tok.eod_id, dtype) for s in ("train", "val")}
  per_source: list[dict] = []
  val_keys: list[np.ndarray] = []
  contaminated = [0] * len(spec.sources)
  total_bytes = 0
  docs = _documents(spec, per_source)
  # The corpus streams in, so its size (and an ETA) is unknown: the bar counts documents.
  bar = Progress("prepare", None, "doc", enabled=True)
  tasks = batch_documents(docs)
  for results in ordered_map(tokenize_task_fn, (tok, decontaminator), tasks, workers):
    bar.update(len(results))
    for (i, split, nbytes), ids_T in results:
      total_bytes += nbytes
      if ids_T is None:
        contaminated[i] += 1
        continue
      rows_RxL = packers[split].add(ids_T)
      if len(rows_RxL):
        writers["train" if split == "train" else "valtmp"].write(rows_RxL)
        if split == "val":
          val_keys.append(row_keys(rows_RxL))
  bar.summary = f"{total_bytes / 1e6:.1f} MB of text tokenized"
  bar.close()
  check_documents(spec, per_source)
  train_meta = writers["train"].close()
  valtmp_meta = writers["valtmp"].close()
  check_sequences(spec, {"train": train_meta, "val": valtmp_meta}, packers)
  val_meta, dropped = dedupe_validation(tmp, train_meta, valtmp_meta, np.concatenate(val_keys),
                                         spec.seq_len, dtype, records_per_shard)
  wall = time.time() - start
  log.info("prepared %.1f MB of text in %.1f s (%.1f MB/s, tokenizer %.1f s)", total_bytes / 1e6,
           wall, total_bytes / 1e6 / max(wall, 1e-9), tokenizer_s)
  return assemble_meta(spec, tok, decontaminator, per_source, contaminated, total_bytes,
                       {"train": train_meta, "val": val_meta}, packers, dropped)


def check_documents(spec: PrepareSpec, per_source: list[dict]) -> None:
  if not any(s["num_documents"] for s in per_source):
    raise DataError(f"data.sources {list(spec.sources)} yielded no documents; check the paths "
                    f"or run python -m dlmscale.data.fetch for package corpora")


def check_sequences(spec: PrepareSpec, split_metas: dict, counts: dict) -> None:
  """Each split (validation before dedupe) must hold at least one full sequence."""
  for split in ("train", "val"):
    if not split_metas[split]["num_sequences"]:
      raise DataError(f"the {split} split has no full sequence of {spec.seq_len} tokens "
                      f"({counts[split].num_documents} documents); lower data.seq_len, add "
                      f"data, or change data.val_fraction or data.split_unit")


@dataclasses.dataclass(frozen=True)
class SplitCounts:
  """What a Packer counts over a split, for engines that pack without one."""

  num_documents: int
  num_tokens: int  # document tokens including one eod each
  tail_tokens: int  # left over after the last full row


def assemble_meta(spec: PrepareSpec, tok, decontaminator, per_source: list[dict],
                  contaminated: list[int], total_bytes: int, split_metas: dict, counts: dict,
                  dropped: int) -> dict:
  """meta.json's dict from the shard writers' split metas and the per-split counts."""
  for src, n in zip(per_source, contaminated):
    src["num_decontaminated"] = n
  train_meta, val_meta = split_metas["train"], split_metas["val"]
  for split, m in (("train", train_meta), ("val", val_meta)):
    m.update(num_documents=counts[split].num_documents, num_tokens=counts[split].num_tokens,
             num_tail_tokens_dropped=counts[split].tail_tokens)
  # Tokens of the rows kept, so num_tokens = seq_len * num_sequences + tail in both splits.
  val_meta["num_tokens"] -= dropped * spec.seq_len
  val_meta["num_sequences_dropped_as_in_train"] = dropped
  return {
      "format_version": FORMAT_VERSION,
      "prepare_key": spec.key(),
      "spec": spec.to_dict(),
      "seq_len": spec.seq_len,
      "dtype": np.dtype(token_dtype(tok.vocab_size)).name,
      "tokenizer": tokenizers_lib.describe(tok),
      "sources": per_source,
      "decontaminate": decontaminator.describe() if decontaminator else None,
      "num_text_bytes": total_bytes,
      "splits": {"train": train_meta, "val": val_meta},
  }


def _write_json_atomic(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)
