"""Prepare the code corpus: the Python standard library, decontaminated, own SentencePiece.

  python -m dlmscale.main --mode=prepare --config=configs/prepare_code.py

Sources: the running interpreter's standard library without its test suites (~730 files, ~12 MB):
the tests are mostly assert scaffolding, generated tables and deliberately odd encodings, not code
a coder model should imitate; python_stdlib?include_tests=true adds them (~1,800 files, needs
on_decode_error=skip for four non-UTF-8 test files). Files sharing a 13-word n-gram with a
HumanEval or MBPP problem are dropped (dlmscale/data/decontaminate.py has the rule; none of the
stdlib is flagged today). Needs `python -m dlmscale.data.fetch benchmarks`. Prepared here
(Python 3.11.7, seq_len 512): 734 files, 3.20M train tokens in 6,255 sequences, 41k validation
tokens, in under a minute.
"""
from dlmscale.config import default_config


def get_config():
  c = default_config()
  c.data.update(
      sources="python_stdlib",
      # BPE keeps identifiers and indentation runs whole; byte fallback covers any character.
      tokenizer="train_sentencepiece?vocab_size=8192&model_type=bpe",
      on_decode_error="error",
      decontaminate="humaneval,mbpp",
      decontaminate_ngram=13,
      seq_len=512,
      val_fraction=0.02,
      # Whole folders held out: the templated encodings/cp*.py family stays on one side.
      split_unit="directory",
      workers=4,
  )
  return c
