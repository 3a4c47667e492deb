"""Tokenizers: each reserves a dedicated end-of-document id and a real mask id for diffusion.

Specs (see dlmscale/data/spec.py): `byte`, `sentencepiece:<model path>?...`,
`hf:<tokenizer.json path>?...`, `train_sentencepiece?vocab_size=...` (trained by prepare).
"""
from collections.abc import Iterable

from dlmscale.data.errors import DataError
from dlmscale.data.spec import parse_spec
from dlmscale.data.tokenizers import base, byte, hf, spm, train_spm
from dlmscale.data.tokenizers.byte import ByteTokenizer
from dlmscale.data.tokenizers.hf import HFTokenizer
from dlmscale.data.tokenizers.spm import SentencePieceTokenizer

_LOADERS = {"byte": byte.load, "sentencepiece": spm.load, "hf": hf.load,
            train_spm.KIND: train_spm.load}
KINDS = tuple(sorted(_LOADERS))


def _parse(spec: str):
  parsed = parse_spec(spec, what="tokenizer")
  if parsed.kind not in _LOADERS:
    raise DataError(f"unknown tokenizer {spec!r}; use one of {list(KINDS)}, e.g. 'byte' or "
                    "'sentencepiece:/path/sp.model'")
  return parsed


def get_tokenizer(spec: str, model_dir: str | None = None):
  """The tokenizer a spec names; trained kinds load `<model_dir>/tokenizer.model`."""
  parsed = _parse(spec)
  return _LOADERS[parsed.kind](parsed, model_dir)


def needs_training(spec: str) -> bool:
  """Whether prepare must call train_tokenizer before get_tokenizer can load this spec."""
  return _parse(spec).kind == train_spm.KIND


def train_tokenizer(spec: str, texts: Iterable[str], out_dir: str):
  """Trains a trainable spec on `texts`, writes `<out_dir>/tokenizer.model`, returns it loaded."""
  parsed = _parse(spec)
  if parsed.kind != train_spm.KIND:
    raise DataError(f"tokenizer {spec!r} is not trained on the corpus (only {train_spm.KIND} "
                    "is); call get_tokenizer instead")
  return train_spm.train(parsed, texts, out_dir)


def canonical_spec(spec: str) -> str:
  """The `spec` a tokenizer from this config value will report, computed without loading it.

  Prepare records describe(tok)["spec"] in meta.json; a config whose canonical_spec differs
  (e.g. another vocab_size for train_sentencepiece) asks for a different tokenization.
  """
  parsed = _parse(spec)
  if parsed.kind == train_spm.KIND:
    return train_spm.canonical(parsed)
  if parsed.kind == "byte":
    return byte.load(parsed).spec
  opts = base.options_of(parsed, base.RESERVE_DEFAULTS)
  return base.spec_text(parsed.kind, parsed.target, opts, base.RESERVE_DEFAULTS)


def describe(tok) -> dict:
  """JSON-ready facts about a tokenizer for meta.json."""
  out = {"kind": getattr(tok, "kind", tok.name), "spec": tok.spec,
         "vocab_size": int(tok.vocab_size), "eod_id": int(tok.eod_id),
         "mask_id": int(tok.mask_id), "fingerprint": tok.fingerprint(),
         "ordinary_pieces": int(tok.ordinary_pieces),
         "model_pieces": int(getattr(tok, "model_pieces", tok.ordinary_pieces))}
  out["appended_ids"] = out["vocab_size"] - out["model_pieces"]
  if getattr(tok, "training_spec", None):
    out["training_spec"] = tok.training_spec
  return out


__all__ = ["ByteTokenizer", "HFTokenizer", "KINDS", "SentencePieceTokenizer", "canonical_spec",
           "describe", "get_tokenizer", "needs_training", "train_tokenizer"]
