"""Tokenizers: reserved ids, round trips, fingerprints, pickling, corpus-trained SentencePiece."""
import glob
import json
import os
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import sentencepiece as spm

from dlmscale.data.errors import DataError
from dlmscale.data.tokenizers import (ByteTokenizer, canonical_spec, describe, get_tokenizer,
                                      needs_training, train_tokenizer)
from dlmscale.data.tokenizers import train_spm

# Code with tabs, CRLF, trailing spaces, non-ASCII, and text spelling special pieces.
CODE = ("def f(x):\n\treturn 'héllo → 世界 🙂'  \r\n\n    # <mask> </s> <|endoftext|> [MASK]\n"
        "  if x:  pass\n")
TRAIN = "train_sentencepiece?vocab_size=400"


@pytest.fixture(scope="module")
def texts():
  paths = sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "*.py")))
  paths += [textwrap.__file__]
  return [open(p, encoding="utf-8").read() for p in paths]


@pytest.fixture(scope="module")
def trained(texts, tmp_path_factory):
  out = tmp_path_factory.mktemp("trained")
  return train_tokenizer(TRAIN, texts, str(out)), out


def plain_spm(tmp_path, texts, name, **kw):
  """A SentencePiece model trained directly (as a user would), without dlmscale's reservations."""
  args = dict(vocab_size=420, model_type="bpe", character_coverage=1.0, byte_fallback=True,
              normalization_rule_name="identity", remove_extra_whitespaces=False,
              add_dummy_prefix=False, num_threads=1, minloglevel=2)
  args.update(kw)
  path = tmp_path / name
  with open(path, "wb") as f:
    spm.SentencePieceTrainer.train(sentence_iterator=iter(texts[:4]), model_writer=f, **args)
  return str(path)


def hf_json(tmp_path, texts, special_tokens, name="tokenizer.json", added=()):
  """A real byte-level BPE tokenizer.json built with the `tokenizers` library."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=350, special_tokens=list(special_tokens),
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                show_progress=False)
  tok.train_from_iterator(texts, trainer)
  tok.add_tokens(list(added))
  path = tmp_path / name
  tok.save(str(path))
  return str(path)


def assert_reserved_ok(tok, texts):
  ids = np.concatenate([tok.encode(t) for t in texts + [CODE]])
  assert ids.dtype == np.int32 and ids.min() >= 0
  assert tok.eod_id != tok.mask_id
  assert tok.eod_id not in ids and tok.mask_id not in ids
  assert max(ids.max(), tok.eod_id, tok.mask_id) < tok.vocab_size


# ---- byte -------------------------------------------------------------------------------
def test_byte_fingerprint_value_is_frozen():
  # Value before the package split; recorded experiment fingerprints depend on it.
  assert ByteTokenizer().fingerprint() == "3163a1cb28754fdf"
  tok = pickle.loads(pickle.dumps(get_tokenizer("byte")))
  assert tok.fingerprint() == "3163a1cb28754fdf"
  assert describe(tok)["spec"] == "byte" and not needs_training("byte")


@pytest.mark.parametrize("spec, match", [
    ("sentencepiece-nope", "train_sentencepiece"),
    ("byte?x=1", "takes no path"),
    ("sentencepiece:/no/such.model", "not found"),
    ("hf:/no/such/tokenizer.json", "not found"),
    ("sentencepiece:/x.model?mask_piece=a", "unknown option 'mask_piece'"),
    ("train_sentencepiece?model_type=char", "model_type"),
    ("train_sentencepiece?vocab_size=0", "positive"),
])
def test_bad_specs(spec, match):
  with pytest.raises(DataError, match=match):
    get_tokenizer(spec, model_dir="/nonexistent")


def test_not_a_model_file(tmp_path):
  path = tmp_path / "x.model"
  path.write_text("print('hi')\n")
  with pytest.raises(DataError, match="not a SentencePiece model"):
    get_tokenizer(f"sentencepiece:{path}")
  with pytest.raises(DataError, match="not a tokenizer.json"):
    get_tokenizer(f"hf:{path}")


# ---- corpus-trained SentencePiece --------------------------------------------------------
def test_trained_roundtrip_and_reserved_ids(trained, texts):
  tok, out = trained
  assert needs_training(TRAIN) and os.listdir(out) == ["tokenizer.model"]
  assert tok.vocab_size == 400 and describe(tok)["appended_ids"] == 0
  assert tok.decode(tok.encode(CODE)) == CODE
  assert all(tok.decode(tok.encode(t)) == t for t in texts)
  assert_reserved_ok(tok, texts)
  ids = tok.encode(CODE)
  assert tok.decode(np.concatenate([[tok.eod_id], ids[:5], [tok.mask_id], ids[5:]])) == CODE
  # Subword pieces, not bytes (only ~140 of the 400 ids are not byte-fallback pieces).
  assert len(tok.encode(texts[0])) < 0.8 * len(texts[0].encode("utf-8"))


def test_trained_deterministic_across_processes(trained, texts, tmp_path):
  tok, out = trained
  again = train_tokenizer(TRAIN, texts, str(tmp_path / "again"))
  first = (out / "tokenizer.model").read_bytes()
  assert (tmp_path / "again" / "tokenizer.model").read_bytes() == first
  assert again.fingerprint() == tok.fingerprint()
  # A fresh interpreter (other hash seed) trains the same bytes and fingerprints them the same.
  code = ("import glob, json, os, sys, textwrap\n"
          "from dlmscale.data.tokenizers import train_tokenizer, get_tokenizer\n"
          "p = sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), '*.py')))\n"
          "texts = [open(f, encoding='utf-8').read() for f in p + [textwrap.__file__]]\n"
          f"t = train_tokenizer({TRAIN!r}, texts, sys.argv[1])\n"
          f"print(get_tokenizer({TRAIN!r}, model_dir=sys.argv[1]).fingerprint())\n")
  env = dict(os.environ, PYTHONHASHSEED="123")
  sub = tmp_path / "sub"
  res = subprocess.run([sys.executable, "-c", code, str(sub)], env=env, capture_output=True,
                       text=True, check=True)
  assert res.stdout.split()[-1] == tok.fingerprint()
  assert (sub / "tokenizer.model").read_bytes() == first


def test_trained_load_checks_prepare_and_spec(trained, texts, tmp_path):
  tok, out = trained
  loaded = get_tokenizer(TRAIN, model_dir=str(out))
  assert loaded.fingerprint() == tok.fingerprint()
  assert loaded.spec == loaded.training_spec == canonical_spec(TRAIN) == describe(tok)["spec"]
  assert canonical_spec(TRAIN + "&seed=0") == canonical_spec(TRAIN)
  assert canonical_spec(TRAIN + "&seed=1") != canonical_spec(TRAIN)
  with pytest.raises(DataError, match="--mode=prepare"):
    get_tokenizer(TRAIN)
  with pytest.raises(DataError, match="--mode=prepare"):
    get_tokenizer(TRAIN, model_dir=str(tmp_path))
  with pytest.raises(DataError, match="trained with vocab_size=400 but the config asks "
                                      "vocab_size=500"):
    get_tokenizer("train_sentencepiece?vocab_size=500", model_dir=str(out))
  with pytest.raises(DataError, match="model_type=unigram"):
    get_tokenizer(TRAIN + "&model_type=bpe", model_dir=str(out))
  # The same file as a plain sentencepiece: spec tokenizes and fingerprints identically.
  plain = get_tokenizer(f"sentencepiece:{out / 'tokenizer.model'}")
  assert plain.fingerprint() == tok.fingerprint() and plain.training_spec is None
  np.testing.assert_array_equal(plain.encode(CODE), tok.encode(CODE))


def test_train_errors(texts, tmp_path):
  with pytest.raises(DataError, match="no text"):
    train_tokenizer(TRAIN, iter([]), str(tmp_path))
  with pytest.raises(DataError, match="lower vocab_size"):
    train_tokenizer("train_sentencepiece?vocab_size=100000", texts[:1], str(tmp_path))
  with pytest.raises(DataError, match="get_tokenizer"):
    train_tokenizer("byte", texts, str(tmp_path))
  assert not os.path.exists(tmp_path / "tokenizer.model")


def test_sampled_training_is_bounded_and_seeded(texts, tmp_path):
  spec = "train_sentencepiece?vocab_size=400&model_type=bpe&input_sentence_size=8"
  a = train_tokenizer(spec + "&seed=1", texts, str(tmp_path / "a"))
  b = train_tokenizer(spec + "&seed=1", texts, str(tmp_path / "b"))
  c = train_tokenizer(spec + "&seed=2", texts, str(tmp_path / "c"))
  assert len(list(train_spm.sentences(texts, 2048))) > 30  # so 8 is a real sample
  assert a.fingerprint() == b.fingerprint() != c.fingerprint()
  assert a.decode(a.encode(CODE)) == CODE
  items = [f"s{i}" for i in range(1000)]
  picked = train_spm.sample(items, 40, seed=1)
  assert len(picked) == 40 and picked == sorted(picked, key=items.index)
  assert picked == train_spm.sample(items, 40, seed=1) != train_spm.sample(items, 40, seed=2)
  assert train_spm.sample(items[:10], 40, seed=1) == items[:10]


def test_long_documents_split_not_dropped():
  doc = "short line\n" + "é" * 50 + "x" * 3 + "\n" + "tail"
  parts = list(train_spm.sentences([doc, ""], max_bytes=16))
  assert "".join(parts) == doc
  assert all(0 < len(p.encode("utf-8")) <= 16 for p in parts)


# ---- SentencePiece model files -----------------------------------------------------------
def test_sentencepiece_appends_missing_mask_and_eod(tmp_path, texts):
  path = plain_spm(tmp_path, texts, "eos.model")
  tok = get_tokenizer(f"sentencepiece:{path}")
  n = spm.SentencePieceProcessor(model_file=path).get_piece_size()
  assert (tok.eod_id, tok.mask_id, tok.vocab_size) == (2, n, n + 1)  # eos is SentencePiece's id 2
  assert tok.decode(tok.encode(CODE)) == CODE
  assert_reserved_ok(tok, texts)
  path = plain_spm(tmp_path, texts, "noeos.model", eos_id=-1)
  tok = get_tokenizer(f"sentencepiece:{path}")
  assert (tok.eod_id, tok.mask_id, tok.vocab_size) == (n, n + 1, n + 2)
  assert describe(tok)["appended_ids"] == 2


def test_sentencepiece_no_room_for_mask(tmp_path, texts):
  path = plain_spm(tmp_path, texts, "eos.model")
  n = spm.SentencePieceProcessor(model_file=path).get_piece_size()
  with pytest.raises(DataError, match="no mask piece and append_special=false.*'<mask>'"):
    get_tokenizer(f"sentencepiece:{path}?append_special=false")
  with pytest.raises(DataError, match="no room for the mask id"):
    get_tokenizer(f"sentencepiece:{path}?max_vocab={n}")
  assert get_tokenizer(f"sentencepiece:{path}?max_vocab={n + 1}").vocab_size == n + 1


def test_sentencepiece_existing_pieces(tmp_path, texts):
  path = plain_spm(tmp_path, texts, "ctl.model", control_symbols=["<mask>", "<m2>"])
  proc = spm.SentencePieceProcessor(model_file=path)
  tok = get_tokenizer(f"sentencepiece:{path}?append_special=false")
  assert (tok.eod_id, tok.mask_id) == (proc.eos_id(), proc.piece_to_id("<mask>"))
  assert tok.vocab_size == proc.get_piece_size()
  assert_reserved_ok(tok, texts)
  other = get_tokenizer(f"sentencepiece:{path}?mask=<m2>")
  assert other.mask_id == proc.piece_to_id("<m2>")
  assert other.fingerprint() != tok.fingerprint()  # same bytes, another reserved id
  with pytest.raises(DataError, match="no piece '<nope>'"):
    get_tokenizer(f"sentencepiece:{path}?mask=<nope>")
  with pytest.raises(DataError, match="ordinary text"):
    get_tokenizer(f"sentencepiece:{path}?mask=x")
  with pytest.raises(DataError, match="both"):
    get_tokenizer(f"sentencepiece:{path}?mask=</s>")


def test_sentencepiece_user_defined_mask_never_encoded(tmp_path, texts):
  path = plain_spm(tmp_path, texts, "ud.model", user_defined_symbols=["<mask>"])
  proc = spm.SentencePieceProcessor(model_file=path)
  assert proc.piece_to_id("<mask>") in proc.encode("a <mask> b")  # the raw model would
  tok = get_tokenizer(f"sentencepiece:{path}?append_special=false")
  assert tok.mask_id == proc.piece_to_id("<mask>")
  assert tok.decode(tok.encode(CODE)) == CODE
  assert_reserved_ok(tok, texts)
  tok2 = pickle.loads(pickle.dumps(tok))
  np.testing.assert_array_equal(tok2.encode(CODE), tok.encode(CODE))


def test_sentencepiece_fingerprint_follows_bytes_not_path(tmp_path, texts):
  a = plain_spm(tmp_path, texts, "a.model")
  b = plain_spm(tmp_path, texts, "b.model", vocab_size=440)
  copy = str(tmp_path / "copy.model")
  shutil.copy(a, copy)
  fa = get_tokenizer(f"sentencepiece:{a}").fingerprint()
  assert fa == get_tokenizer(f"sentencepiece:{copy}").fingerprint()
  assert fa != get_tokenizer(f"sentencepiece:{b}").fingerprint()
  tok = get_tokenizer(f"sentencepiece:{a}")
  again = pickle.loads(pickle.dumps(tok))
  assert again.fingerprint() == fa and again.vocab_size == tok.vocab_size
  np.testing.assert_array_equal(again.encode(CODE), tok.encode(CODE))


# ---- Hugging Face tokenizer.json ---------------------------------------------------------
def test_hf_existing_specials(tmp_path, texts):
  path = hf_json(tmp_path, texts, ["<|endoftext|>", "<mask>"], added=["<ud>"])
  tok = get_tokenizer(f"hf:{path}?append_special=false")
  assert (tok.eod_id, tok.mask_id) == (0, 1) and tok.vocab_size == 351
  assert tok.decode(tok.encode(CODE + "<ud>")) == CODE + "<ud>"
  assert_reserved_ok(tok, texts)  # CODE spells both specials as text
  again = pickle.loads(pickle.dumps(tok))
  assert again.fingerprint() == tok.fingerprint()
  np.testing.assert_array_equal(again.encode(CODE), tok.encode(CODE))
  assert describe(tok)["ordinary_pieces"] == 349
  with pytest.raises(DataError, match="not a special token"):
    get_tokenizer(f"hf:{path}?mask=<ud>")
  with pytest.raises(DataError, match="no token"):
    get_tokenizer(f"hf:{path}?eod=</s>")


def test_hf_appends_and_no_room(tmp_path, texts):
  path = hf_json(tmp_path, texts, [])
  tok = get_tokenizer(f"hf:{path}")
  assert (tok.eod_id, tok.mask_id, tok.vocab_size) == (350, 351, 352)
  assert tok.decode(tok.encode(CODE)) == CODE
  assert_reserved_ok(tok, texts)
  with pytest.raises(DataError, match="no end-of-document piece and append_special=false"):
    get_tokenizer(f"hf:{path}?append_special=false")
  with pytest.raises(DataError, match="no room for the mask id"):
    get_tokenizer(f"hf:{path}?max_vocab=351")
  other = hf_json(tmp_path, texts[1:], [], name="other.json")
  assert get_tokenizer(f"hf:{other}").fingerprint() != tok.fingerprint()
