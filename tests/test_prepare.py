"""Prepared data (dlmscale/data/prepare.py, prepared.py, shards.py) and the stream over it.

Guarantees checked on small real corpora written into tmp dirs (`files:` sources, byte or
SentencePiece tokenizers): deterministic and atomic preparation, meta.json that matches the
shards, validation held out by document (or folder) and never in training, the token-matched
stream over a real prepared split, and a clear DataError that writes nothing for each bad input.
"""
import collections
import hashlib
import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import sentencepiece as spm

from dlmscale.config import default_config
from dlmscale.data import (DataError, TokenStream, get_tokenizer, open_prepared, prepare,
                           prepared_dir)
from dlmscale.data.prepare_spec import split_group

from _shared import tiny_config

prepare_mod = sys.modules["dlmscale.data.prepare"]  # the module (the package exports the function)
REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.py"
if str(REPO) not in sys.path:  # tiny.py imports `configs.models` from the repo root
  sys.path.insert(0, str(REPO))
L = 16  # sequence length of the small corpora
MARKER = re.compile(r"<<(D\w+)>>")


# ---- corpora and helpers ---------------------------------------------------------------------
def doc_text(tag: str, words: int) -> str:
  """A document marked at both ends: <<tag>> words ... <</tag>>."""
  body = " ".join(f"{tag.lower()}w{k}" for k in range(words))
  return f"<<{tag}>> {body} <</{tag}>>\n"


def write_folders(root: Path, groups: int = 16, files: int = 3) -> dict[str, str]:
  """root/gNN/fM.txt, one marked document each, of varied lengths: {relative name: text}."""
  docs = {}
  for g in range(groups):
    for f in range(files):
      name = f"g{g:02d}/f{f}.txt"
      docs[name] = doc_text(f"D{g:02d}{f}", 20 + (7 * g + 3 * f) % 23)
      (root / name).parent.mkdir(parents=True, exist_ok=True)
      (root / name).write_text(docs[name])
  return docs


def write_jsonl(path: Path, n: int = 12) -> dict[str, str]:
  """One JSONL file of n marked documents: {name#line: text}."""
  docs = {f"{path.name}#{i + 1}": doc_text(f"DJ{i:02d}", 25 + 3 * i) for i in range(n)}
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text("".join(json.dumps({"text": t}) + "\n" for t in docs.values()))
  return docs


def data_cfg(sources: str, **kw):
  d = default_config().data
  d.update(sources=sources, seq_len=L, val_fraction=0.25, split_unit="document")
  d.update(**kw)
  return d


def snapshot(root: Path) -> dict[str, tuple]:
  """Relative path -> (sha256, mtime_ns) of every file, "dir" for directories, under root."""
  out = {}
  for p in sorted(Path(root).rglob("*")):
    rel = str(p.relative_to(root))
    if p.is_dir():
      out[rel] = "dir"
    else:
      out[rel] = (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
  return out


def listing(root: Path) -> list[str]:
  """Every path under root, hidden temp dirs included."""
  return sorted(str(p.relative_to(root)) for p in Path(root).rglob("*"))


def assert_fails_writing_nothing(d, out_dir: Path, *patterns: str, watch: Path | None = None):
  """prepare(d, out_dir) raises DataError matching every pattern; nothing new under `watch`."""
  watch = Path(watch or out_dir.parent)
  before = listing(watch)
  with pytest.raises(DataError) as err:
    prepare(d, str(out_dir))
  for pattern in patterns:
    assert re.search(pattern, str(err.value)), (pattern, str(err.value))
  assert listing(watch) == before
  return str(err.value)


def split_documents(rows_NxL: np.ndarray, tok) -> list[str]:
  """The split's token stream cut at end-of-document ids: complete documents, then the
  (possibly empty) piece cut off by the dropped tail."""
  stream_T = rows_NxL.reshape(-1).astype(np.int64)
  cuts = np.flatnonzero(stream_T == tok.eod_id)
  pieces = np.split(stream_T, cuts)
  return [tok.decode(p[p != tok.eod_id]) for p in pieces]


def row_counter(rows_NxL) -> collections.Counter:
  return collections.Counter(bytes(np.ascontiguousarray(r, dtype="<i4")) for r in rows_NxL)


def train_spm(path: Path, texts: list[str], vocab_size: int) -> str:
  """A SentencePiece model trained as a user would: no <mask> piece (</s> is its eos)."""
  with open(path, "wb") as f:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=f, vocab_size=vocab_size, model_type="bpe",
        character_coverage=1.0, num_threads=1, minloglevel=2)
  return str(path)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """Two `files:` sources (48 marked text files in 16 folders; one JSONL file of 12 records)
  prepared once with the byte tokenizer: (root, data cfg, {source index: {name: text}}, dir)."""
  root = tmp_path_factory.mktemp("corpus")
  docs = {0: write_folders(root / "a"), 1: write_jsonl(root / "b" / "notes.jsonl")}
  d = data_cfg(f"files:{root / 'a'};files:{root / 'b'}")
  out = root / "prepared"
  prepare(d, str(out))
  return root, d, docs, out


# ---- 1. deterministic and atomic -------------------------------------------------------------
def test_prepare_byte_identical_across_runs_workers_and_task_sizes(corpus, tmp_path,
                                                                   monkeypatch):
  """Preparing again (workers=1, and workers=2 with many small tasks in flight) gives the same
  files, byte for byte, every shard and meta.json."""
  _, d, _, out = corpus
  prepare(d, str(tmp_path / "again"))
  # 1 kB tasks: over a dozen through a window of 8, so out-of-order results would show.
  monkeypatch.setattr(prepare_mod, "_TASK_CHARS", 1000)
  prepare(d, str(tmp_path / "workers2"), workers=2)
  names = sorted(os.listdir(out))
  assert "meta.json" in names and any(n.startswith("train-") for n in names)
  assert any(n.startswith("val-") for n in names)
  for other in ("again", "workers2"):
    assert sorted(os.listdir(tmp_path / other)) == names
    for name in names:
      assert (tmp_path / other / name).read_bytes() == (out / name).read_bytes(), (other, name)
  assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_small_shards_hold_the_same_rows(corpus, tmp_path):
  """records_per_shard=50 writes several shards holding the same rows and fingerprints."""
  _, d, _, out = corpus
  one = open_prepared(str(out), d)
  meta = prepare(d, str(tmp_path / "small"), records_per_shard=50)
  many = open_prepared(str(tmp_path / "small"), d)
  for split in ("train", "val"):
    a, b = getattr(one, split), getattr(many, split)
    shards = meta["splits"][split]["shards"]
    assert len(one.meta["splits"][split]["shards"]) == 1
    assert len(shards) == -(-len(a) // 50) >= 2
    assert all(s["num_records"] == 50 for s in shards[:-1])
    assert len(a) == len(b) == sum(s["num_records"] for s in shards)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    assert a.fingerprint == b.fingerprint
    assert sorted(p for p in os.listdir(tmp_path / "small") if p.startswith(split + "-")) == \
        [s["file"] for s in shards]


def test_second_prepare_into_matching_dir_is_a_noop(corpus, tmp_path):
  """A dir already prepared from the same spec is reused: no file rewritten (bytes, mtime),
  nothing written beside it, whatever the worker or shard settings."""
  _, d, _, _ = corpus
  out = tmp_path / "p"
  meta = prepare(d, str(out))
  before, around = snapshot(out), listing(tmp_path)
  assert prepare(d, str(out)) == meta
  assert prepare(d, str(out), workers=2, records_per_shard=3) == meta
  assert snapshot(out) == before
  assert listing(tmp_path) == around


def test_prepare_into_dir_of_another_spec_is_an_error(corpus, tmp_path):
  """A dir prepared from another data config is never overwritten: DataError naming the
  differing key and both values, and the dir is untouched."""
  _, d, _, _ = corpus
  out = tmp_path / "p"
  prepare(d, str(out))
  before = snapshot(out)
  other = data_cfg(d.sources, seq_len=2 * L)
  msg = assert_fails_writing_nothing(other, out, r"data\.seq_len", rf"prepared {L}\b",
                                     rf"config {2 * L}\b", str(out), watch=tmp_path)
  assert "data.sources" not in msg
  assert snapshot(out) == before
  with pytest.raises(DataError, match=r"data\.split_unit"):
    open_prepared(str(out), data_cfg(d.sources, split_unit="directory"))
  # A non-empty dir without meta.json is not ours to fill either.
  (tmp_path / "busy").mkdir()
  (tmp_path / "busy" / "notes.txt").write_text("mine")
  assert_fails_writing_nothing(d, tmp_path / "busy", "not empty", watch=tmp_path)
  assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_failed_prepare_creates_no_parent_directories(corpus, tmp_path):
  """A prepare that fails writes nothing at all: not even the missing parents of prepared_dir
  (nor a temp dir beside it)."""
  del corpus
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "a.txt").write_text("")
  d = data_cfg(f"files:{tmp_path / 'empty'}")
  assert_fails_writing_nothing(d, tmp_path / "new" / "sub" / "p", "no documents",
                               watch=tmp_path)


def test_url_prepared_dir_is_an_error(corpus, tmp_path, monkeypatch):
  """Shards are renamed with POSIX calls: a gs:// prepared_dir must not become a local folder."""
  monkeypatch.chdir(tmp_path)
  _, d, _, _ = corpus
  with pytest.raises(DataError, match="mounted filesystem"):
    prepare(d, "gs://bucket/prepared")
  assert listing(tmp_path) == []


# ---- 2. meta.json ---------------------------------------------------------------------------
def test_meta_counts_match_the_shards(corpus):
  """meta.json: seq_len, dtype, per-split sequence/token/document counts equal to what the
  shards hold, shard sizes, content hashes, tokenizer fingerprint, per-source entries."""
  _, d, docs, out = corpus
  meta = json.loads((out / "meta.json").read_text())
  data = open_prepared(str(out), d)
  assert data.meta == meta
  assert meta["seq_len"] == L and meta["dtype"] == "uint16"
  assert meta["tokenizer"]["fingerprint"] == get_tokenizer("byte").fingerprint()
  assert meta["tokenizer"]["spec"] == "byte"
  tok = data.tokenizer
  n_docs = 0
  for split in ("train", "val"):
    m, rows = meta["splits"][split], getattr(data, split).to_numpy()
    assert rows.shape == (m["num_sequences"], L) and m["num_sequences"] > 0
    assert rows.dtype == np.dtype("<u2")
    assert m["num_sequences"] == sum(s["num_records"] for s in m["shards"])
    for s in m["shards"]:
      assert (out / s["file"]).stat().st_size == s["bytes"]
    assert m["fingerprint"] == hashlib.sha256(rows.astype("<i4").tobytes()).hexdigest()
    assert 0 <= m["num_tail_tokens_dropped"] < L
    assert m["num_tokens"] == L * m["num_sequences"] + m["num_tail_tokens_dropped"]
    # One end-of-document id per document; the last one's falls in the dropped tail, if any.
    pieces = split_documents(rows, tok)
    assert m["num_documents"] == len(pieces) - 1 + (m["num_tail_tokens_dropped"] > 0)
    n_docs += m["num_documents"]
  assert meta["splits"]["val"]["num_sequences_dropped_as_in_train"] == 0
  texts = [t for by_name in docs.values() for t in by_name.values()]
  assert n_docs == len(texts)
  assert sum(meta["splits"][s]["num_tokens"] for s in ("train", "val")) == \
      sum(len(t.encode()) + 1 for t in texts)
  assert meta["num_text_bytes"] == sum(len(t.encode()) for t in texts)
  assert [s["spec"] for s in meta["sources"]] == list(d.sources.split(";"))
  for i, src in enumerate(meta["sources"]):
    assert src["num_documents"] == len(docs[i])
    assert src["num_chars"] == sum(len(t) for t in docs[i].values())
    assert src["num_undecodable_skipped"] == 0 and re.fullmatch(r"[0-9a-f]{64}",
                                                                src["fingerprint"])
  assert meta["sources"][0]["fingerprint"] != meta["sources"][1]["fingerprint"]


def test_source_fingerprint_tracks_its_own_content(corpus, tmp_path):
  """Changing one byte of one source file changes that source's fingerprint only."""
  root, _, _, _ = corpus
  for name in ("a", "b"):
    shutil.copytree(root / name, tmp_path / name)
  d = data_cfg(f"files:{tmp_path / 'a'};files:{tmp_path / 'b'}")
  before = prepare(d, str(tmp_path / "p1"))["sources"]
  path = tmp_path / "a" / "g03" / "f1.txt"
  text = path.read_text()
  path.write_text(text.replace("w7 ", "w8 ", 1))  # one byte, same length
  assert len(path.read_bytes()) == len(text.encode())
  after = prepare(d, str(tmp_path / "p2"))["sources"]
  assert after[0]["fingerprint"] != before[0]["fingerprint"]
  assert after[1]["fingerprint"] == before[1]["fingerprint"]
  assert after[0]["num_chars"] == before[0]["num_chars"]


# ---- 3. validation held out ----------------------------------------------------------------
def test_documents_are_wholly_in_one_split(corpus):
  """Split by document: every document's text lies in exactly one split's token stream,
  complete; no document (marker) contributes to both."""
  _, d, docs, out = corpus
  data = open_prepared(str(out), d)
  texts = {t for by_name in docs.values() for t in by_name.values()}
  seen = {}
  for split in ("train", "val"):
    pieces = split_documents(getattr(data, split).to_numpy(), data.tokenizer)
    assert set(pieces[:-1]) <= texts  # whole documents, nothing else
    assert any(t.startswith(pieces[-1]) for t in texts)  # the tail is a document's start
    seen[split] = set(MARKER.findall("".join(pieces)))
  assert seen["train"] and seen["val"]
  assert not seen["train"] & seen["val"]
  assert len(seen["train"] | seen["val"]) == len(texts)


def test_split_unit_directory_keeps_folders_together(corpus, tmp_path):
  """split_unit='directory' puts all files of a folder on one side; 'document' would not."""
  root, _, docs, _ = corpus
  folders = {name.split("/")[0] for name in docs[0]}
  sides = {}
  for unit in ("document", "directory"):
    d = data_cfg(f"files:{root / 'a'}", split_unit=unit)
    prepare(d, str(tmp_path / unit))
    data = open_prepared(str(tmp_path / unit), d)
    side = collections.defaultdict(set)
    for split in ("train", "val"):
      stream = "".join(split_documents(getattr(data, split).to_numpy(), data.tokenizer))
      for tag in MARKER.findall(stream):
        side[f"g{tag[1:3]}"].add(split)
    assert set(side) == folders
    sides[unit] = side
  assert all(len(s) == 1 for s in sides["directory"].values())
  assert {"train"} in sides["directory"].values() and {"val"} in sides["directory"].values()
  assert any(len(s) == 2 for s in sides["document"].values())  # so the check above has teeth
  assert split_group("g03/f1.txt", "directory") == "g03/"


@pytest.fixture(scope="module")
def repeated(tmp_path_factory):
  """Marked documents plus 12 identical filler documents, some held out, whose rows repeat:
  (data cfg, prepared dir)."""
  root = tmp_path_factory.mktemp("repeated")
  write_folders(root / "docs", groups=6)
  for i in range(12):
    (root / "docs" / f"fill{i:02d}.txt").write_text("x" * (20 * L + 3))
  d = data_cfg(f"files:{root / 'docs'}")
  prepare(d, str(root / "prepared"))
  return d, root / "prepared"


def test_validation_rows_never_in_training(repeated):
  """No validation row equals a training row; the corpus makes such rows (repeated fillers in
  both splits), and they are dropped and counted."""
  d, out = repeated
  data = open_prepared(str(out), d)
  train, val = row_counter(data.train.to_numpy()), row_counter(data.val.to_numpy())
  assert not set(train) & set(val)
  assert data.meta["splits"]["val"]["num_sequences_dropped_as_in_train"] > 0
  assert len(val) > 0


def test_meta_val_token_count_matches_kept_rows(repeated):
  """meta.json's val num_tokens describes the val shards (L * rows + tail) after the rows that
  also occur in train were dropped, as for train."""
  d, out = repeated
  meta = open_prepared(str(out), d).meta
  assert meta["splits"]["val"]["num_sequences_dropped_as_in_train"] > 0
  for split in ("train", "val"):
    m = meta["splits"][split]
    assert m["num_tokens"] == L * m["num_sequences"] + m["num_tail_tokens_dropped"], (split, m)


# ---- 4. the stream over prepared data --------------------------------------------------------
def test_stream_epochs_are_permutations_of_the_cap(corpus):
  """On a real prepared split: each complete epoch is a permutation of the capped rows, the
  partial last epoch draws only from them, and epochs are reshuffled."""
  _, d, _, out = corpus
  data = open_prepared(str(out), d)
  ts = TokenStream(data.train, unique_tokens=60 * L, total_tokens=7 * L * 20, global_batch=7,
                   seed=3)
  assert ts.n_unique == 60 and ts.num_steps == 20
  capped_U = ts.capped_indices
  assert len(set(capped_U.tolist())) == 60 and capped_U.max() < len(data.train)
  cap = row_counter(data.train[capped_U])
  rows = np.concatenate([ts.global_batch_at(k) for k in range(ts.num_steps)])
  assert rows.dtype == np.int32 and len(rows) == 140
  epochs = [rows[i:i + 60] for i in range(0, 140, 60)]
  assert row_counter(epochs[0]) == cap and row_counter(epochs[1]) == cap
  assert not row_counter(epochs[2]) - cap  # partial epoch: a sub-multiset of the cap
  assert not np.array_equal(epochs[0], epochs[1])
  outside = np.setdiff1d(np.arange(len(data.train)), capped_U)
  only_outside = set(row_counter(data.train[outside])) - set(cap)
  assert only_outside and not only_outside & set(row_counter(rows))


def test_stream_budgets_nested_and_exact(corpus):
  """U1 < U2: U1's capped rows are the first of U2's; U and T are honoured exactly, with the
  actual numbers reported when they are not multiples of seq_len (summary())."""
  _, d, _, out = corpus
  train = open_prepared(str(out), d).train
  args = dict(global_batch=5, seed=1)
  small = TokenStream(train, unique_tokens=40 * L + 5, total_tokens=5 * L * 30 + 7, **args)
  large = TokenStream(train, unique_tokens=90 * L, total_tokens=5 * L * 30, **args)
  np.testing.assert_array_equal(small.capped_indices, large.capped_indices[:40])
  np.testing.assert_array_equal(train[small.capped_indices], train[large.capped_indices[:40]])
  s = small.summary()
  assert (s["unique_tokens_requested"], s["unique_tokens_actual"]) == (40 * L + 5, 40 * L)
  assert (s["total_tokens_requested"], s["total_tokens_actual"]) == (5 * L * 30 + 7,
                                                                     5 * L * 30)
  assert s["n_unique_sequences"] == 40 and s["num_steps"] == 30
  assert s["num_epochs"] == pytest.approx(150 / 40) and s["fingerprint"] == small.fingerprint()
  assert sum(small.global_batch_at(k).size for k in range(small.num_steps)) == 5 * L * 30
  with pytest.raises(DataError):
    small.global_batch_at(30)


def test_stream_identical_for_every_objective():
  """ar, mdm, ar_input_mask and ar_dropout experiments built from tests/configs/tiny.py get the
  same stream: fingerprint, summary and batches, equal to experiment.make_stream's."""
  from dlmscale import experiment  # noqa: PLC0415  (heavy: model, optimizer, parallel)
  streams = {}
  for objective in ("ar", "mdm", "ar_input_mask", "ar_dropout"):
    exp = experiment.build_experiment(tiny_config(), objective)
    assert exp.objective == objective
    streams[objective] = exp.stream
  cfg = tiny_config()
  data = open_prepared(prepared_dir(cfg.data), cfg.data)
  ref = experiment.make_stream(cfg, data)
  steps = (0, 7, ref.num_steps - 1)
  for objective, ts in streams.items():
    assert ts.fingerprint() == ref.fingerprint(), objective
    assert ts.summary() == ref.summary(), objective
    for k in steps:
      np.testing.assert_array_equal(ts.global_batch_at(k), ref.global_batch_at(k))
      np.testing.assert_array_equal(ts.local_batch_at(k), ref.local_batch_at(k))
  assert experiment.make_stream(tiny_config(**{"data.seed": 1}), data).fingerprint() != \
      ref.fingerprint()


# ---- 5. bad input: a clear DataError, nothing written --------------------------------------
def test_empty_corpus(tmp_path):
  """Sources that yield no documents (empty and blank files): DataError, nothing written."""
  src = tmp_path / "src"
  src.mkdir()
  (src / "a.txt").write_text("")
  (src / "b.txt").write_text("  \n\n\t\n")
  (src / "c.jsonl").write_text("\n")
  d = data_cfg(f"files:{src}")
  assert_fails_writing_nothing(d, tmp_path / "p", "no documents", re.escape(str(src)))


def test_undecodable_bytes_error_names_file_and_offset(tmp_path):
  """Invalid UTF-8: the error names the file and the exact byte offset; nothing written.
  JSONL errors name the line and the offset within it."""
  src = tmp_path / "src"
  write_folders(src, groups=3)
  bad = src / "g01" / "f2.txt"
  raw = bad.read_bytes()
  bad.write_bytes(raw[:57] + b"\xff" + raw[57:])
  d = data_cfg(f"files:{src}")
  assert_fails_writing_nothing(d, tmp_path / "p", re.escape(str(bad)), r"byte offset 57\b",
                               "on_decode_error")
  jl = tmp_path / "j" / "x.jsonl"
  jl.parent.mkdir()
  jl.write_bytes(b'{"text": "fine"}\n{"text": "ab\xc3(cd"}\n')
  assert_fails_writing_nothing(data_cfg(f"files:{jl}"), tmp_path / "q",
                               re.escape(f"{jl} line 2"), r"byte offset 12\b")


def test_undecodable_documents_skipped_and_counted(tmp_path):
  """on_decode_error='skip': the bad document is left out of both splits and counted in
  meta.json; the rest is prepared."""
  src = tmp_path / "src"
  docs = write_folders(src, groups=4)
  bad = src / "g02" / "f0.txt"
  bad.write_bytes(bad.read_bytes()[:30] + b"\xc0\xaf" + bad.read_bytes()[30:])
  d = data_cfg(f"files:{src}", on_decode_error="skip")
  meta = prepare(d, str(tmp_path / "p"))
  src_meta = meta["sources"][0]
  assert src_meta["num_undecodable_skipped"] == 1
  assert src_meta["num_documents"] == len(docs) - 1
  assert meta["splits"]["train"]["num_documents"] + meta["splits"]["val"]["num_documents"] == \
      len(docs) - 1
  data = open_prepared(str(tmp_path / "p"), d)
  stream = "".join(data.tokenizer.decode(getattr(data, s).to_numpy()) for s in ("train", "val"))
  assert "<<D020>>" not in stream and "<<D021>>" in stream


def test_budget_outside_the_prepared_corpus(corpus):
  """U larger than the prepared train split, or smaller than one sequence: DataError naming
  the numbers."""
  _, d, _, out = corpus
  train = open_prepared(str(out), d).train
  have = len(train) * L
  with pytest.raises(DataError, match=rf"unique_tokens={have + 1}\b.*\b{have}\b"):
    TokenStream(train, unique_tokens=have + 1, total_tokens=10 * have, global_batch=4, seed=0)
  TokenStream(train, unique_tokens=have, total_tokens=10 * have, global_batch=4, seed=0)
  with pytest.raises(DataError, match=rf"unique_tokens={L - 1}\b.*\b{L}\b"):
    TokenStream(train, unique_tokens=L - 1, total_tokens=10 * have, global_batch=4, seed=0)


@pytest.fixture(scope="module")
def spm_models(corpus, tmp_path_factory):
  """Two SentencePiece models trained on the corpus, neither with a <mask> piece."""
  _, _, docs, _ = corpus
  out = tmp_path_factory.mktemp("spm")
  texts = list(docs[0].values())
  return train_spm(out / "a.model", texts, 120), train_spm(out / "b.model", texts, 140)


def test_tokenizer_without_room_for_mask(corpus, spm_models, tmp_path):
  """A SentencePiece model with no mask piece and append_special=false, or max_vocab leaving no
  room to append one: DataError naming the mask id, nothing written."""
  root, _, _, _ = corpus
  model, _ = spm_models
  n = spm.SentencePieceProcessor(model_file=model).get_piece_size()
  for option, pattern in (("append_special=false", "no mask piece"),
                          (f"max_vocab={n}", "no room for the mask id")):
    d = data_cfg(f"files:{root / 'a'}", tokenizer=f"sentencepiece:{model}?{option}")
    assert_fails_writing_nothing(d, tmp_path / "p", pattern, re.escape(model))
  ok = data_cfg(f"files:{root / 'a'}", tokenizer=f"sentencepiece:{model}?max_vocab={n + 1}")
  meta = prepare(ok, str(tmp_path / "p"))
  assert meta["tokenizer"]["mask_id"] == n and meta["tokenizer"]["vocab_size"] == n + 1


def test_tokenizer_fingerprint_mismatch(corpus, spm_models, tmp_path):
  """Prepared with one model, opened after the model file was replaced by another: DataError
  naming both tokenizer fingerprints."""
  root, _, _, _ = corpus
  a, b = spm_models
  model = tmp_path / "sp.model"
  shutil.copyfile(a, model)
  d = data_cfg(f"files:{root / 'a'}", tokenizer=f"sentencepiece:{model}")
  meta = prepare(d, str(tmp_path / "p"))
  prepared_fp = meta["tokenizer"]["fingerprint"]
  assert open_prepared(str(tmp_path / "p"), d).tokenizer.fingerprint() == prepared_fp
  shutil.copyfile(b, model)
  new_fp = get_tokenizer(f"sentencepiece:{model}").fingerprint()
  assert new_fp != prepared_fp
  with pytest.raises(DataError, match="tokenizer") as err:
    open_prepared(str(tmp_path / "p"), d)
  assert prepared_fp in str(err.value) and new_fp in str(err.value)


@pytest.mark.parametrize("split, damage", [("train", "missing"), ("train", "truncated"),
                                           ("val", "truncated")])
def test_missing_or_truncated_shard(corpus, tmp_path, split, damage):
  """A shard deleted or cut short after preparing: open_prepared raises DataError naming the
  file."""
  _, d, _, _ = corpus
  out = tmp_path / "p"
  meta = prepare(d, str(out), records_per_shard=40)
  shards = meta["splits"][split]["shards"]
  shard = out / shards[min(1, len(shards) - 1)]["file"]
  if damage == "missing":
    shard.unlink()
  else:
    with open(shard, "r+b") as f:
      f.truncate(shard.stat().st_size // 2)
  with pytest.raises(DataError, match=re.escape(str(shard))):
    open_prepared(str(out), d)
