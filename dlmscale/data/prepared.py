"""Opening prepared data for training, checked against the config that wants it."""
from __future__ import annotations

import dataclasses
import logging
import os

from dlmscale.data import tokenizers as tokenizers_lib
from dlmscale.data.errors import DataError
from dlmscale.data.prepare import check_local, prepare, read_meta
from dlmscale.data.prepare_spec import PrepareSpec, check_same_spec
from dlmscale.data.shards import PreparedSplit

log = logging.getLogger("dlmscale")
CACHE_ENV = "DLMSCALE_DATA_DIR"


@dataclasses.dataclass(frozen=True)
class PreparedData:
  """A prepared corpus: train and validation splits as [N, L] readers, tokenizer, meta."""

  path: str
  train: PreparedSplit
  val: PreparedSplit
  tokenizer: object
  meta: dict


def default_prepared_dir(data_cfg) -> str:
  """Where data.prepared_dir='' puts a corpus: a content-addressed cache shared by runs."""
  root = os.environ.get(CACHE_ENV) or os.path.join(
      os.path.expanduser("~"), ".cache", "dlmscale", "prepared")
  return os.path.join(root, PrepareSpec.from_config(data_cfg).key()[:16])


def prepared_dir(data_cfg) -> str:
  return data_cfg.prepared_dir or default_prepared_dir(data_cfg)


def open_prepared(directory: str, data_cfg=None) -> PreparedData:
  """Opens prepared data; with data_cfg, errors unless it was prepared from that config."""
  check_local(directory)
  meta = read_meta(directory)
  if meta is None:
    raise DataError(f"no prepared data at {directory} (no meta.json); run python -m "
                    f"dlmscale.main --mode=prepare --config=<your config> first")
  if data_cfg is not None:
    check_same_spec(meta, PrepareSpec.from_config(data_cfg), directory)
    spec = str(data_cfg.tokenizer)
  else:
    spec = meta["spec"]["tokenizer"]
  tok = tokenizers_lib.get_tokenizer(spec, model_dir=directory)
  if tok.fingerprint() != meta["tokenizer"]["fingerprint"]:
    raise DataError(f"{directory} was tokenized with tokenizer {meta['tokenizer']['fingerprint']}"
                    f" but the config's {spec!r} is {tok.fingerprint()}; prepare again with "
                    f"this tokenizer into another data.prepared_dir")
  seq_len, dtype = meta["seq_len"], meta["dtype"]
  splits = {s: PreparedSplit(directory, s, meta["splits"][s], seq_len, dtype)
            for s in ("train", "val")}
  return PreparedData(path=directory, train=splits["train"], val=splits["val"], tokenizer=tok,
                      meta=meta)


def ensure_prepared(data_cfg) -> PreparedData:
  """Opens the config's prepared data, preparing it first if it is not there yet."""
  directory = prepared_dir(data_cfg)
  if read_meta(directory) is None:
    log.info("preparing %s into %s", data_cfg.sources, directory)
    prepare(data_cfg, directory, workers=data_cfg.workers,
            records_per_shard=data_cfg.records_per_shard)
  return open_prepared(directory, data_cfg)
