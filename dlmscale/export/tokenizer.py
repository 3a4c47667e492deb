"""dlmscale tokenizers as a Hugging Face tokenizer.json (+ tokenizer_config.json).

The byte tokenizer becomes a byte-level BPE without merges, a SentencePiece model a `tokenizers`
Unigram or BPE model with the same normalisation, an hf: tokenizer its own tokenizer.json. The
end-of-document and mask ids are special tokens at the same ids (appended ones are added).
Unlike dlmscale's encoders, HF ones match special-token text ("<|mask|>") as that token.
"""
from __future__ import annotations

import json

from dlmscale.data.errors import DataError
from dlmscale.data.tokenizers import ByteTokenizer, HFTokenizer, SentencePieceTokenizer
from dlmscale.data.tokenizers.spm import model_proto
from dlmscale.optional import require

# Names for reserved ids the tokenizer model has no piece for (appended after its pieces).
APPENDED_NAMES = {"eod": "<|endoftext|>", "mask": "<|mask|>"}
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
_UNIGRAM, _BPE = 1, 2


def _lib():
  return require("tokenizers", "hf_export", "exporting a tokenizer to Hugging Face")


def _byte_chars() -> list[str]:
  """The printable character standing for each byte in byte-level BPE (GPT-2's alphabet, which
  the ByteLevel pre-tokenizer maps bytes to): printable Latin-1 as itself, the rest from 256 up."""
  printable = {*range(33, 127), *range(161, 173), *range(174, 256)}
  spare = iter(range(256, 512))
  return [chr(b) if b in printable else chr(next(spare)) for b in range(256)]


def _from_bytes(lib):
  vocab = {c: b for b, c in enumerate(_byte_chars())}
  tok = lib.Tokenizer(lib.models.BPE(vocab=vocab, merges=[]))
  tok.pre_tokenizer = lib.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
  tok.decoder = lib.decoders.ByteLevel()
  return tok


def _from_sentencepiece(lib, sp: SentencePieceTokenizer):
  proto = model_proto(sp.model_bytes(), sp.spec)
  ts, ns = proto.trainer_spec, proto.normalizer_spec
  pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
  if ts.model_type == _UNIGRAM:
    model = lib.models.Unigram([(piece, score) for piece, score, _ in pieces], ts.unk_id,
                               ts.byte_fallback)
  elif ts.model_type == _BPE:
    normal = {piece: (score, i) for i, (piece, score, kind) in enumerate(pieces)
              if kind == _NORMAL}
    # A merge's priority is its merged piece's score (then id), as SentencePiece's BPE ranks them.
    ranked = sorted((-normal[piece][0], normal[piece][1], piece[:cut], piece[cut:])
                    for piece in normal for cut in range(1, len(piece))
                    if piece[:cut] in normal and piece[cut:] in normal)
    model = lib.models.BPE(vocab={piece: i for i, (piece, _, _) in enumerate(pieces)},
                           merges=[(a, b) for _, _, a, b in ranked],
                           unk_token=pieces[ts.unk_id][0], fuse_unk=True,
                           byte_fallback=ts.byte_fallback)
  else:
    raise DataError(f"tokenizer {sp.spec}: SentencePiece model type {ts.model_type} has no "
                    "Hugging Face export (unigram and bpe do)")
  tok = lib.Tokenizer(model)
  norm = lib.normalizers
  steps = [norm.Precompiled(ns.precompiled_charsmap)] if ns.precompiled_charsmap else []
  if ns.remove_extra_whitespaces:  # spaces only: SentencePiece keeps newlines and tabs
    steps += [norm.Replace(lib.Regex(r"^ +| +$"), ""), norm.Replace(lib.Regex(" {2,}"), " ")]
  if ns.add_dummy_prefix:
    steps.append(norm.Prepend(" "))
  if ns.escape_whitespaces:
    steps.append(norm.Replace(" ", "\u2581"))
  tok.normalizer = norm.Sequence(steps)
  dec = lib.decoders
  steps = [dec.Replace("\u2581", " "), dec.ByteFallback(), dec.Fuse()]
  if ns.add_dummy_prefix:
    steps.append(dec.Strip(" ", 1, 0))
  tok.decoder = dec.Sequence(steps)
  # Control and unknown pieces are never produced from text; user-defined ones always whole.
  specials = [lib.AddedToken(piece, special=True, normalized=False)
              for piece, _, kind in pieces if kind in (_CONTROL, _UNKNOWN)]
  tok.add_special_tokens(specials)
  tok.add_tokens([lib.AddedToken(piece, special=False, normalized=False)
                  for piece, _, kind in pieces if kind == _USER_DEFINED])
  return tok


def hf_tokenizer(dlm_tok):
  """A `tokenizers.Tokenizer` encoding like `dlm_tok`, with its eod and mask ids special."""
  lib = _lib()
  if isinstance(dlm_tok, ByteTokenizer):
    tok = _from_bytes(lib)
  elif isinstance(dlm_tok, SentencePieceTokenizer):
    tok = _from_sentencepiece(lib, dlm_tok)
  elif isinstance(dlm_tok, HFTokenizer):
    tok = lib.Tokenizer.from_str(dlm_tok.__getstate__()["json_text"])
  else:
    raise DataError(f"tokenizer {dlm_tok!r} has no Hugging Face export: use byte, sentencepiece "
                    "or hf tokenizers")
  # Reserved ids past the model's pieces were appended eod first, then mask (base.reserve_ids).
  for what, i in sorted((("eod", dlm_tok.eod_id), ("mask", dlm_tok.mask_id)), key=lambda x: x[1]):
    name = tok.id_to_token(i)
    if name is None:
      if tok.get_vocab_size(with_added_tokens=True) != i:
        raise DataError(f"tokenizer {dlm_tok.spec}: the {what} id {i} is not next after the "
                        f"exported {tok.get_vocab_size(with_added_tokens=True)} tokens")
      name = APPENDED_NAMES[what]
    tok.add_special_tokens([lib.AddedToken(name, special=True, normalized=False)])
    if tok.token_to_id(name) != i:
      raise DataError(f"tokenizer {dlm_tok.spec}: exported {what} token {name!r} got id "
                      f"{tok.token_to_id(name)}, not {i}; the tokenizer cannot be exported")
  return tok


def tokenizer_files(dlm_tok, seq_len: int) -> dict[str, str]:
  """{file name: text} of tokenizer.json, tokenizer_config.json and special_tokens_map.json."""
  tok = hf_tokenizer(dlm_tok)
  eod, mask = tok.id_to_token(dlm_tok.eod_id), tok.id_to_token(dlm_tok.mask_id)
  specials = {"eos_token": eod, "pad_token": eod, "mask_token": mask}
  config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": seq_len,
            "clean_up_tokenization_spaces": False, **specials}
  return {"tokenizer.json": tok.to_str(pretty=True),
          "tokenizer_config.json": json.dumps(config, indent=1),
          "special_tokens_map.json": json.dumps(specials, indent=1)}
