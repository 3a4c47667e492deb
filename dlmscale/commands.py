"""The data modes of the CLI: prepare a corpus, print the token-stream fingerprint."""
from __future__ import annotations

import json
import time

import jax

from dlmscale import config as config_lib
from dlmscale.data import ensure_prepared, prepare, prepared_dir, validation_subset
from dlmscale.data.pipeline import array_fingerprint
from dlmscale.runner import make_stream


def prepare_corpus(cfg) -> dict:
  """Prepares cfg.data into its prepared_dir (once); returns a summary."""
  config_lib.validate(cfg)
  d = cfg.data
  directory = prepared_dir(d)
  start = time.time()
  meta = prepare(d, directory, workers=d.workers, records_per_shard=d.records_per_shard)
  wall = time.time() - start
  tr, va = meta["splits"]["train"], meta["splits"]["val"]
  return {
      "prepared_dir": directory,
      "documents": {"train": tr["num_documents"], "val": va["num_documents"]},
      "tokens": {"train": tr["num_tokens"], "val": va["num_tokens"]},
      "sequences": {"train": tr["num_sequences"], "val": va["num_sequences"]},
      "val_sequences_dropped_as_in_train": va["num_sequences_dropped_as_in_train"],
      "text_mb": meta["num_text_bytes"] / 1e6,
      "seconds": wall,
      "tokenizer": meta["tokenizer"],
      "sources": meta["sources"],
  }


def stream_identity(cfg) -> dict:
  """Stream and validation fingerprints of cfg's data config, computed without a model."""
  config_lib.validate(cfg)
  d = cfg.data
  data = ensure_prepared(d)
  stream = make_stream(cfg, data)
  val = validation_subset(data.val, cfg.eval.max_sequences)
  return {
      "objectives": list(config_lib.objective_names(cfg)),
      "prepared_dir": data.path,
      **stream.summary(),
      "train_split_fingerprint": data.train.fingerprint,
      "val_split_fingerprint": data.val.fingerprint,
      "val_sequences_evaluated": len(val),
      "val_evaluated_fingerprint": array_fingerprint(val),
  }


def print_json(obj) -> None:
  if jax.process_index() == 0:
    print(json.dumps(obj, indent=1, sort_keys=True), flush=True)
