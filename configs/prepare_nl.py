"""Prepare the English corpus from packaged text, with its own SentencePiece tokenizer.

  python -m dlmscale.data.fetch nl
  python -m dlmscale.main --mode=prepare --config=configs/prepare_nl.py

~85 MB of text, by source (documents, characters): Python 3.11 docs reStructuredText (497,
11.0M), Linux 6.1 Documentation .rst/.txt without translations (4,762, 25.4M), GCIDE dictionary
in blocks of 256 entries (494, 39.9M), King James Bible by chapter (1,189, 4.3M), Jane Austen's
six novels by chapter (269, 4.0M). Documents are chapter/page sized so the whole-document
validation split holds out part of every source. GCIDE has three entries with Windows-1252
bytes, decoded as such rather than dropped. Prepared here (seq_len 512): 23.0M train tokens in
44,863 sequences, 0.47M validation tokens, in ~2.5 minutes.
"""
from dlmscale.config import default_config

SOURCES = (
    "python_docs",
    "linux_docs",
    "gcide?cp1252_fallback=true",
    "kjv",
    "janeausten",
)


def get_config():
  c = default_config()
  c.data.update(
      sources=";".join(SOURCES),
      # A 30k-sentence sample (~35 MB) trains BPE in ~1.5 min on one thread; unigram on the
      # whole 83 MB train split took over 9 minutes.
      tokenizer="train_sentencepiece?vocab_size=16384&model_type=bpe&input_sentence_size=30000",
      on_decode_error="error",
      decontaminate="",
      seq_len=512,
      val_fraction=0.02,
      workers=4,
  )
  return c
