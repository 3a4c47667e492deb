"""Corpus preparation: documents -> whole-document train/val split -> packed sequences."""
import dataclasses
import functools
import hashlib

import numpy as np

from dlmscale.data.errors import DataError
from dlmscale.data.packing import is_validation, pack, token_dtype
from dlmscale.data.sources import SourceContext, iter_documents
from dlmscale.data.tokenizers import get_tokenizer


@dataclasses.dataclass(frozen=True)
class PackedCorpus:
  """Read-only packed splits; validation documents never contribute to train_NxL."""

  train_NxL: np.ndarray
  val_MxL: np.ndarray
  tokenizer: object
  meta: dict


def array_fingerprint(x: np.ndarray) -> str:
  """sha256 of shape and int32 content, so storage dtype does not change it."""
  h = hashlib.sha256(repr(tuple(x.shape)).encode())
  h.update(np.ascontiguousarray(x, dtype="<i4").tobytes())
  return h.hexdigest()


def load_corpus(corpus: str, tokenizer: str, seq_len: int, val_fraction: float, seed: int,
                max_val_sequences: int | None = None) -> PackedCorpus:
  """Tokenizes, splits by document and packs a corpus; memoized per argument tuple.

  The result is shared between callers (e.g. the AR and diffusion runs), so its
  arrays are read-only.
  """
  if seq_len < 2:
    raise DataError(f"seq_len must be at least 2, got {seq_len}; pass seq_len >= 2")
  if not 0.0 < val_fraction < 1.0:
    raise DataError(f"val_fraction must be in (0, 1), got {val_fraction}; e.g. 0.02")
  if max_val_sequences is not None and max_val_sequences < 1:
    raise DataError(f"max_val_sequences must be >= 1 or None, got {max_val_sequences}")
  # Positional call so keyword and positional spellings share one cache entry.
  return _load(corpus, tokenizer, int(seq_len), float(val_fraction), int(seed),
               max_val_sequences)


@functools.lru_cache(maxsize=4)
def _load(corpus, tokenizer_name, seq_len, val_fraction, seed, max_val_sequences):
  tok = get_tokenizer(tokenizer_name)
  ctx = SourceContext()
  stats = ctx.stats
  splits = {"train": [], "val": []}
  for name, text in iter_documents(corpus, ctx):
    split = "val" if is_validation(name, val_fraction, seed) else "train"
    splits[split].append(tok.encode(text))
  if not splits["train"] and not splits["val"]:
    raise DataError(f"corpus {corpus!r} yielded no documents; check the source is installed")
  dtype = token_dtype(tok.vocab_size)
  packed = {k: pack(v, seq_len, tok.eod_id, dtype=dtype) for k, v in splits.items()}
  for k, seqs in packed.items():
    if not len(seqs):
      raise DataError(f"{k} split of {corpus!r} has no full sequence of {seq_len} tokens; "
                      f"lower seq_len or change val_fraction")
  train_NxL = packed["train"]
  # Templated files (e.g. the encodings/cp*.py family) repeat whole sequences across
  # documents; dropping exact matches keeps memorised train text out of validation.
  train_rows = set(map(bytes, train_NxL))
  fresh_M = np.array([bytes(row) not in train_rows for row in packed["val"]], dtype=bool)
  val_MxL = packed["val"][fresh_M]
  if not len(val_MxL):
    raise DataError(f"every validation sequence of {corpus!r} also occurs in train; "
                    f"raise val_fraction or change seed")
  if max_val_sequences is not None and len(val_MxL) > max_val_sequences:
    # Evenly spaced rows keep the subset representative of every document region.
    rows = np.arange(max_val_sequences) * len(val_MxL) // max_val_sequences
    val_MxL = val_MxL[rows]
  for a in (train_NxL, val_MxL):
    a.flags.writeable = False
  meta = {
      "corpus": corpus,
      "tokenizer": tok.name,
      "tokenizer_fingerprint": tok.fingerprint(),
      "seq_len": seq_len,
      "val_fraction": val_fraction,
      "seed": seed,
      "num_documents_train": len(splits["train"]),
      "num_documents_val": len(splits["val"]),
      "num_documents_undecodable": stats.get("undecodable_skipped", 0),
      # Document tokens including one eod each, before the tail is dropped.
      "num_tokens_train": sum(a.size + 1 for a in splits["train"]),
      "num_tokens_val": sum(a.size + 1 for a in splits["val"]),
      "num_sequences_train": len(train_NxL),
      "num_sequences_val": len(val_MxL),
      "num_val_sequences_dropped_as_in_train": int((~fresh_M).sum()),
      "train_fingerprint": array_fingerprint(train_NxL),
      "val_fingerprint": array_fingerprint(val_MxL),
  }
  return PackedCorpus(train_NxL=train_NxL, val_MxL=val_MxL, tokenizer=tok, meta=meta)
