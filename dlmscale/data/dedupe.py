"""Validation rows that also occur verbatim in train are dropped, with bounded memory."""
import os

import numpy as np

from dlmscale.data.errors import DataError
from dlmscale.data.prepare_spec import MAX_SEQ_LEN
from dlmscale.data.shards import PreparedSplit, ShardWriter

# Fixed odd multipliers: two independent 64-bit linear hashes per row (a 128-bit key), computed
# for whole blocks in numpy. Per-row hashlib calls were 20% of prepare's time.
_KEY_MULT_2xL = np.random.default_rng(20251123).integers(1, 2**63, size=(2, MAX_SEQ_LEN),
                                                          dtype=np.uint64) | np.uint64(1)


def row_keys(rows_RxL: np.ndarray) -> np.ndarray:
  """[R, 2] uint64 keys; equal rows give equal keys, distinct rows collide with p ~ 2^-128."""
  rows_RxL = np.asarray(rows_RxL).astype(np.uint64)
  mult_2xL = _KEY_MULT_2xL[:, : rows_RxL.shape[1]]
  # uint64 products and sums wrap modulo 2^64, which is the hash.
  return np.stack([(rows_RxL * mult_2xL[i]).sum(axis=1, dtype=np.uint64) for i in (0, 1)], 1)


def dedupe_validation(tmp, train_meta, valtmp_meta, val_keys_Mx2, seq_len, dtype,
                      records_per_shard):
  """Drops validation rows that also occur verbatim in train; returns (val meta, dropped).

  Templated documents (e.g. the stdlib's encodings/cp*.py) repeat whole rows across files; a
  validation row memorised from train would flatter every model. Only validation row keys are
  held in memory; train is re-read block by block and looked up in the sorted keys.
  """
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
  check_val_kept(val_meta["num_sequences"])
  return val_meta, int(in_train_M.sum())


def check_val_kept(num_sequences: int) -> None:
  if not num_sequences:
    raise DataError("every validation sequence also occurs in train; raise data.val_fraction "
                    "or change data.split_seed")
