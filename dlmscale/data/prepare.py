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
from dlmscale.data.spec import parse_spec, split_specs
from dlmscale.data.workers import ordered_map

log = logging.getLogger("dlmscale")
FORMAT_VERSION = 1
META_FILE = "meta.json"
# Documents per worker task: large enough to amortise inter-process transfer, small enough
# to keep the in-flight window (workers x 4 tasks) a few MB.
_TASK_CHARS = 1 << 20
# 'directory' holds out whole folders: templated families (the stdlib's encodings/cp*.py)
# then land on one side of the split instead of leaking near-copies into validation.
SPLIT_UNITS = ("document", "directory")


def split_group(name: str, unit: str) -> str:
  """The unit a document is held out with: itself, or its folder (top-level files alone)."""
  if unit == "directory" and "/" in name.split("#", 1)[0]:
    return name.split("#", 1)[0].rsplit("/", 1)[0] + "/"
  return name


@dataclasses.dataclass(frozen=True)
class PrepareSpec:
  """The data-config fields that decide the prepared content (and nothing else)."""

  sources: tuple[str, ...]
  tokenizer: str
  on_decode_error: str
  decontaminate: tuple[str, ...]
  decontaminate_ngram: int
  seq_len: int
  val_fraction: float
  split_seed: int
  split_unit: str

  @classmethod
  def from_config(cls, d) -> "PrepareSpec":
    names = tuple(n.strip() for n in str(d.decontaminate).split(",") if n.strip())
    spec = cls(sources=tuple(split_specs(d.sources, "data.sources")), tokenizer=str(d.tokenizer),
               on_decode_error=str(d.on_decode_error), decontaminate=names,
               decontaminate_ngram=int(d.decontaminate_ngram), seq_len=int(d.seq_len),
               val_fraction=float(d.val_fraction), split_seed=int(d.split_seed),
               split_unit=str(d.split_unit))
    spec.validate()
    return spec

  def validate(self) -> None:
    if not 2 <= self.seq_len <= MAX_SEQ_LEN:
      raise DataError(f"data.seq_len must be in [2, {MAX_SEQ_LEN}], got {self.seq_len}")
    if not 0.0 < self.val_fraction < 1.0:
      raise DataError(f"data.val_fraction must be in (0, 1), got {self.val_fraction}; e.g. 0.02")
    if self.on_decode_error not in sources_lib.DECODE_POLICIES:
      raise DataError(f"data.on_decode_error must be one of {list(sources_lib.DECODE_POLICIES)}"
                      f", got {self.on_decode_error!r}")
    if self.split_unit not in SPLIT_UNITS:
      raise DataError(f"data.split_unit must be one of {list(SPLIT_UNITS)}, got "
                      f"{self.split_unit!r}")
    if self.decontaminate and self.decontaminate_ngram < 1:
      raise DataError(f"data.decontaminate_ngram must be >= 1, got {self.decontaminate_ngram}")
    for s in self.sources:
      kind = parse_spec(s, "data.sources entry").kind
      if kind not in sources_lib.kinds():
        raise DataError(f"unknown source kind {kind!r} in {s!r}; use one of "
                        f"{sources_lib.kinds()}")

  def to_dict(self) -> dict:
    d = dataclasses.asdict(self)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

  def key(self) -> str:
    """Content address of the prepared data this spec produces."""
    blob = json.dumps({"format": FORMAT_VERSION, **self.to_dict()}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _documents(spec: PrepareSpec, per_source: list[dict]):
  """(source index, split, text, UTF-8 bytes) for every document of every source, in order."""
  for i, src in enumerate(spec.sources):
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


def _tokenize_task_fn(tokenizer, decontaminator):
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


def _tasks(docs):
  task, size = [], 0
  for i, split, text, nbytes in docs:
    task.append(((i, split, nbytes), text))
    size += len(text)
    if size >= _TASK_CHARS:
      yield task
      task, size = [], 0
  if task:
    yield task


def _make_decontaminator(spec: PrepareSpec):
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
  spec = PrepareSpec.from_config(data_cfg)
  check_local(out_dir)
  existing = read_meta(out_dir)
  if existing is not None:
    check_same_spec(existing, spec, out_dir)
    return existing
  if os.path.exists(out_dir) and os.listdir(out_dir):
    raise DataError(f"{out_dir} exists, is not empty and has no {META_FILE}; choose an empty "
                    f"or new prepared_dir")
  if workers < 1:
    raise DataError(f"data.workers must be >= 1, got {workers}")
  parent = os.path.dirname(os.path.abspath(out_dir))
  created = _makedirs(parent)
  tmp = os.path.join(parent, f".{os.path.basename(out_dir)}.tmp-{uuid.uuid4().hex[:8]}")
  os.makedirs(tmp)
  try:
    meta = _prepare_into(spec, tmp, workers, records_per_shard)
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


def _prepare_into(spec: PrepareSpec, tmp: str, workers: int, records_per_shard: int) -> dict:
  start = time.time()
  decontaminator = _make_decontaminator(spec)
  if tokenizers_lib.needs_training(spec.tokenizer):
    log.info("training tokenizer %s on the train split", spec.tokenizer)
    tok = tokenizers_lib.train_tokenizer(spec.tokenizer, _train_texts(spec, decontaminator), tmp)
  else:
    tok = tokenizers_lib.get_tokenizer(spec.tokenizer)
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
  for results in ordered_map(_tokenize_task_fn, (tok, decontaminator), _tasks(docs), workers):
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
  for src, n in zip(per_source, contaminated):
    src["num_decontaminated"] = n
  if not any(s["num_documents"] for s in per_source):
    raise DataError(f"data.sources {list(spec.sources)} yielded no documents; check the paths "
                    f"or run python -m dlmscale.data.fetch for package corpora")
  train_meta = writers["train"].close()
  valtmp_meta = writers["valtmp"].close()
  for split, m in (("train", train_meta), ("val", valtmp_meta)):
    if not m["num_sequences"]:
      raise DataError(f"the {split} split has no full sequence of {spec.seq_len} tokens "
                      f"({packers[split].num_documents} documents); lower data.seq_len, add "
                      f"data, or change data.val_fraction or data.split_unit")
  val_meta, dropped = _dedupe_validation(tmp, train_meta, valtmp_meta, np.concatenate(val_keys),
                                         spec.seq_len, dtype, records_per_shard)
  wall = time.time() - start
  for split, m in (("train", train_meta), ("val", val_meta)):
    m.update(num_documents=packers[split].num_documents, num_tokens=packers[split].num_tokens,
             num_tail_tokens_dropped=packers[split].tail_tokens)
  # Tokens of the rows kept, so num_tokens = seq_len * num_sequences + tail in both splits.
  val_meta["num_tokens"] -= dropped * spec.seq_len
  val_meta["num_sequences_dropped_as_in_train"] = dropped
  log.info("prepared %.1f MB of text in %.1f s (%.1f MB/s, tokenizer %.1f s)", total_bytes / 1e6,
           wall, total_bytes / 1e6 / max(wall, 1e-9), tokenizer_s)
  return {
      "format_version": FORMAT_VERSION,
      "prepare_key": spec.key(),
      "spec": spec.to_dict(),
      "seq_len": spec.seq_len,
      "dtype": dtype.name,
      "tokenizer": tokenizers_lib.describe(tok),
      "sources": per_source,
      "decontaminate": decontaminator.describe() if decontaminator else None,
      "num_text_bytes": total_bytes,
      "splits": {"train": train_meta, "val": val_meta},
  }


# Fixed odd multipliers: two independent 64-bit linear hashes per row (a 128-bit key), computed
# for whole blocks in numpy. Per-row hashlib calls were 20% of prepare's time.
MAX_SEQ_LEN = 1 << 17
_KEY_MULT_2xL = np.random.default_rng(20251123).integers(1, 2**63, size=(2, MAX_SEQ_LEN),
                                                          dtype=np.uint64) | np.uint64(1)


def row_keys(rows_RxL: np.ndarray) -> np.ndarray:
  """[R, 2] uint64 keys; equal rows give equal keys, distinct rows collide with p ~ 2^-128."""
  rows_RxL = np.asarray(rows_RxL).astype(np.uint64)
  mult_2xL = _KEY_MULT_2xL[:, : rows_RxL.shape[1]]
  # uint64 products and sums wrap modulo 2^64, which is the hash.
  return np.stack([(rows_RxL * mult_2xL[i]).sum(axis=1, dtype=np.uint64) for i in (0, 1)], 1)


def _dedupe_validation(tmp, train_meta, valtmp_meta, val_keys_Mx2, seq_len, dtype,
                       records_per_shard):
  """Drops validation rows that also occur verbatim in train; returns (val meta, dropped).

  Templated documents (e.g. the stdlib's encodings/cp*.py) repeat whole rows across files; a
  validation row memorised from train would flatter every model. Only validation row keys are
  held in memory; train is re-read block by block and looked up in the sorted keys.
  """
  from dlmscale.data.shards import PreparedSplit  # noqa: PLC0415
  order_M = np.argsort(val_keys_Mx2[:, 0], kind="stable")
  sorted_h1_M = val_keys_Mx2[order_M, 0]
  found = set()
  train = PreparedSplit(tmp, "train", train_meta, seq_len, dtype.name)
  for block in train.iter_blocks():
    keys_Bx2 = row_keys(block)
    at_B = np.minimum(np.searchsorted(sorted_h1_M, keys_Bx2[:, 0]), len(sorted_h1_M) - 1)
    hit_B = sorted_h1_M[at_B] == keys_Bx2[:, 0]
    found.update(map(tuple, keys_Bx2[hit_B].tolist()))
  in_train_M = np.array([k in found for k in map(tuple, val_keys_Mx2.tolist())], dtype=bool)
  valtmp = PreparedSplit(tmp, "valtmp", valtmp_meta, seq_len, dtype.name)
  writer = ShardWriter(tmp, "val", seq_len, dtype, records_per_shard)
  start = 0
  for block in valtmp.iter_blocks():
    keep_R = ~in_train_M[start:start + len(block)]
    start += len(block)
    if keep_R.any():
      writer.write(block[keep_R])
  del valtmp
  for s in valtmp_meta["shards"]:
    os.remove(os.path.join(tmp, s["file"]))
  val_meta = writer.close()
  if not val_meta["num_sequences"]:
    raise DataError("every validation sequence also occurs in train; raise data.val_fraction "
                    "or change data.split_seed")
  return val_meta, int(in_train_M.sum())


def check_same_spec(meta: dict, spec: PrepareSpec, directory: str) -> None:
  """Errors when prepared data was made from another data config than `spec`."""
  if meta.get("format_version") != FORMAT_VERSION:
    raise DataError(f"{directory} has prepared-data format {meta.get('format_version')}, this "
                    f"dlmscale reads {FORMAT_VERSION}; re-run prepare into a fresh prepared_dir")
  if meta.get("prepare_key") == spec.key():
    return
  old, new = meta.get("spec", {}), spec.to_dict()
  diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
  raise DataError(f"{directory} was prepared from another data config (differs at "
                  f"{', '.join('data.' + k for k in diff)}: prepared {old.get(diff[0])!r}, "
                  f"config {new.get(diff[0])!r}); use another data.prepared_dir or the "
                  f"original settings")


def _write_json_atomic(path: str, obj) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(obj, f, indent=1, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())
  os.replace(path + ".tmp", path)
