"""Data layer: tokenizer, stdlib source, packing, corpus split and the token-matched stream."""
import numpy as np
import pytest

from dlmscale.data import (ByteTokenizer, DataError, TokenStream, get_tokenizer, load_corpus,
                           validation_batches)
from dlmscale.data import sources
from dlmscale.data.packing import is_validation, pack

L = 8  # synthetic sequence length


def ids_train(n=100, seq_len=L):
  """Row i is all i, so a batch row names the train sequence it came from."""
  return np.repeat(np.arange(n, dtype=np.int32)[:, None], seq_len, axis=1)


def stream(train_NxL=None, **kw):
  args = dict(unique_tokens=30 * L, total_tokens=7 * L * 40, global_batch=7, seed=0)
  args.update(kw)
  return TokenStream(ids_train() if train_NxL is None else train_NxL, **args)


def row_ids(ts, steps=None):
  steps = range(ts.num_steps) if steps is None else steps
  return np.concatenate([ts.global_batch_at(k)[:, 0] for k in steps])


@pytest.fixture(scope="module")
def stdlib64():
  return load_corpus("python_stdlib", "byte", 64, 0.02, 0)


# ---- tokenizer ----------------------------------------------------------------------------
def test_byte_tokenizer_roundtrip_non_ascii():
  tok = get_tokenizer("byte")
  text = "def f(x):\n    return 'héllo → 世界 🙂'\n"
  ids = tok.encode(text)
  assert ids.dtype == np.int32
  assert len(ids) == len(text.encode("utf-8")) > len(text)
  assert tok.decode(ids) == text
  with_special = np.concatenate([ids[:4], [tok.eod_id, tok.mask_id], ids[4:]])
  assert tok.decode(with_special) == text
  assert (tok.eod_id, tok.mask_id, tok.vocab_size) == (256, 257, 258)


def test_tokenizer_fingerprint_stable_and_unknown_name():
  assert ByteTokenizer().fingerprint() == get_tokenizer("byte").fingerprint()
  assert len(ByteTokenizer().fingerprint()) >= 8
  with pytest.raises(DataError, match="byte"):
    get_tokenizer("sentencepiece-nope")


# ---- source -------------------------------------------------------------------------------
def test_stdlib_documents_sorted_without_tests_or_site_packages():
  stats = {}
  names = [name for name, _ in sources.python_stdlib_documents(stats=stats)]
  assert names == sorted(names) and len(names) == len(set(names))
  assert "os.py" in names and "json/__init__.py" in names
  for name in names:
    parts = name.split("/")
    assert not {"test", "tests", "idle_test", "site-packages"} & set(parts), name
  assert stats["documents"] == len(names)
  with_tests = [name for name, _ in sources.python_stdlib_documents(include_tests=True)]
  assert set(names) < set(with_tests)
  assert any(n.startswith("test/") for n in with_tests)
  with pytest.raises(DataError, match="python_stdlib"):
    sources.get_documents("wikipedia")


# ---- packing ------------------------------------------------------------------------------
def test_is_validation_deterministic_seeded_and_near_fraction():
  names = [f"doc{i}.py" for i in range(4000)]
  flags = [is_validation(n, 0.1, 3) for n in names]
  assert flags == [is_validation(n, 0.1, 3) for n in names]
  assert 0.07 < np.mean(flags) < 0.13
  assert flags != [is_validation(n, 0.1, 4) for n in names]


def test_pack_layout_dtype_and_tail():
  docs = [np.array([1, 2, 3]), np.array([4]), np.array([5, 6, 7, 8])]
  seqs = pack(docs, 3, eod_id=9, dtype=np.uint16)
  assert seqs.dtype == np.uint16
  # Stream 1 2 3 | 9 4 9 | 5 6 7 | 8 9: three rows of 3; the 2-token tail is dropped.
  np.testing.assert_array_equal(seqs, [[1, 2, 3], [9, 4, 9], [5, 6, 7]])
  assert pack([], 4, eod_id=0).shape == (0, 4)
  with pytest.raises(DataError, match="dtype"):
    pack([np.array([70000])], 2, eod_id=0, dtype=np.uint16)


# ---- corpus -------------------------------------------------------------------------------
def test_stdlib_validation_never_in_training(stdlib64):
  c = stdlib64
  assert c.train_NxL.shape[1] == c.val_MxL.shape[1] == 64
  train_rows = set(map(bytes, c.train_NxL))
  assert not any(bytes(r) in train_rows for r in c.val_MxL)
  assert c.meta["num_val_sequences_dropped_as_in_train"] < 0.1 * len(c.val_MxL)
  # Packing offsets differ between splits, so also search unaligned: a leaked document's
  # rows would all be found; only templated files (encodings/cp*.py) legitimately are.
  as_bytes = lambda a: np.where(a >= 256, 0, a).astype(np.uint8).tobytes()  # noqa: E731
  train_text = as_bytes(c.train_NxL)
  sample = c.val_MxL[::10]
  found = sum(as_bytes(r) in train_text for r in sample)
  assert found < 0.25 * len(sample)
  assert c.meta["num_documents_val"] > 0 and c.meta["num_documents_train"] > 0
  assert c.meta["num_sequences_train"] == len(c.train_NxL)
  assert c.meta["num_tokens_train"] // 64 == len(c.train_NxL)
  assert "import" in c.tokenizer.decode(c.train_NxL[:64])
  assert c.train_NxL.max() <= c.tokenizer.eod_id


def test_load_corpus_memoized_and_read_only(stdlib64):
  again = load_corpus(corpus="python_stdlib", tokenizer="byte", seq_len=64,
                      val_fraction=0.02, seed=0)
  assert again is stdlib64
  with pytest.raises(ValueError):
    again.train_NxL[0, 0] = 1
  capped = load_corpus("python_stdlib", "byte", 64, 0.02, 0, max_val_sequences=10)
  assert len(capped.val_MxL) == 10
  assert set(map(bytes, capped.val_MxL)) <= set(map(bytes, stdlib64.val_MxL))
  assert capped.meta["train_fingerprint"] == stdlib64.meta["train_fingerprint"]


@pytest.mark.parametrize("kw, match", [
    (dict(seq_len=1), "seq_len"),
    (dict(val_fraction=0.0), "val_fraction"),
    (dict(val_fraction=1.0), "val_fraction"),
    (dict(corpus="nope"), "python_stdlib"),
    (dict(tokenizer="nope"), "byte"),
    (dict(seq_len=10**9), "no full sequence"),
    (dict(corpus="empty"), "no documents"),
])
def test_load_corpus_errors(monkeypatch, kw, match):
  monkeypatch.setitem(sources._SOURCES, "empty", lambda **_: iter(()))
  args = dict(corpus="python_stdlib", tokenizer="byte", seq_len=64, val_fraction=0.02, seed=0)
  args.update(kw)
  with pytest.raises(DataError, match=match):
    load_corpus(**args)


# ---- stream -------------------------------------------------------------------------------
def test_every_epoch_is_a_reshuffled_permutation_of_the_cap():
  ts = stream()
  ids = row_ids(ts)
  capped = np.sort(ts.capped_indices)
  assert len(capped) == 30 and len(set(capped)) == 30
  epochs = ids[: len(ids) // 30 * 30].reshape(-1, 30)
  assert len(epochs) >= 9
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), capped)
  assert len({tuple(e) for e in epochs}) == len(epochs)  # each epoch reshuffled
  assert set(ids) == set(capped)  # nothing outside the cap, incl. the partial last epoch


def test_budgets_are_nested_and_seeded():
  small, large = stream(unique_tokens=10 * L), stream(unique_tokens=60 * L)
  assert set(small.capped_indices) < set(large.capped_indices)
  np.testing.assert_array_equal(small.capped_indices, large.capped_indices[:10])
  other_seed = stream(unique_tokens=10 * L, seed=1)
  assert set(other_seed.capped_indices) != set(small.capped_indices)


def test_budgets_honoured_exactly_with_actuals():
  ts = stream(unique_tokens=30 * L + 5, total_tokens=7 * L * 40 + 3)
  assert ts.n_unique == 30 and ts.unique_tokens_actual == 30 * L
  assert ts.num_steps == 40 and ts.tokens_per_step == 7 * L
  assert ts.total_tokens_actual == 7 * L * 40
  assert ts.num_epochs == pytest.approx(280 / 30)
  assert ts.epoch_at(30) == pytest.approx(7.0)
  s = ts.summary()
  assert (s["unique_tokens_requested"], s["unique_tokens_actual"]) == (30 * L + 5, 30 * L)
  assert (s["total_tokens_requested"], s["total_tokens_actual"]) == (7 * L * 40 + 3, 7 * L * 40)
  assert s["num_steps"] == 40 and s["fingerprint"] == ts.fingerprint()
  assert len(row_ids(ts)) * L == ts.total_tokens_actual
  with pytest.raises(DataError):
    ts.global_batch_at(40)


def test_same_args_same_stream():
  a, b = stream(), stream()
  for k in range(a.num_steps):
    np.testing.assert_array_equal(a.global_batch_at(k), b.global_batch_at(k))
  assert a.global_batch_at(0).dtype == np.int32 and a.global_batch_at(0).shape == (7, L)


def test_process_slices_concatenate_to_global_batch():
  full = stream(global_batch=8)
  parts = [stream(global_batch=8, process_index=i, process_count=2) for i in range(2)]
  for k in range(full.num_steps):
    local = [p.local_batch_at(k) for p in parts]
    assert local[0].shape == (4, L)
    np.testing.assert_array_equal(np.concatenate(local), full.global_batch_at(k))
  assert parts[0].fingerprint() == parts[1].fingerprint() == full.fingerprint()


def test_grain_dataset_matches_local_batches():
  ts = stream(global_batch=8, process_index=1, process_count=2)
  ds = ts.dataset
  assert len(ds) == ts.num_steps
  for k in (0, 5, ts.num_steps - 1):
    np.testing.assert_array_equal(ds[k], ts.local_batch_at(k))


@pytest.mark.parametrize("prefetch", [0, 3])
def test_resumed_iterator_matches_uninterrupted(prefetch):
  ts = stream()
  with ts.iterator(0, prefetch=prefetch) as it:
    full = list(it)
  assert len(full) == ts.num_steps
  k = 13
  with ts.iterator(0, prefetch=prefetch) as it:
    for _ in range(k):
      next(it)
    state = it.get_state()
  assert state == {"next_step": k}
  with stream().iterator(0, prefetch=prefetch) as resumed:
    next(resumed)  # advance past 0 so set_state really has to move it
    resumed.set_state(state)
    rest = list(resumed)
  assert len(rest) == ts.num_steps - k
  for got, want in zip(rest, full[k:]):
    np.testing.assert_array_equal(got, want)
  with pytest.raises(DataError, match="next_step"):
    resumed.set_state({"step": 3})


def test_fingerprint_tracks_seed_and_budget():
  base = stream().fingerprint()
  assert stream().fingerprint() == base
  assert stream(seed=1).fingerprint() != base
  assert stream(unique_tokens=31 * L).fingerprint() != base
  assert stream(unique_tokens=30 * L + 3).fingerprint() == base  # same actual budget
  assert stream().fingerprint(num_steps=5) != base
  changed = ids_train()
  changed[stream().capped_indices[0], 3] += 1000  # one token inside the cap
  assert stream(changed).fingerprint() != base


def test_real_corpus_stream(stdlib64):
  train = stdlib64.train_NxL
  ts = TokenStream(train, unique_tokens=200 * 64, total_tokens=3 * 200 * 64, global_batch=16,
                   seed=0)
  batch = ts.global_batch_at(ts.num_steps - 1)
  rows = set(map(bytes, train[ts.capped_indices].astype(np.int32)))
  assert all(bytes(r) in rows for r in batch)
  assert ts.num_steps == 37 and ts.num_epochs == pytest.approx(37 * 16 / 200)


def test_validation_batches_keep_every_row():
  val = ids_train(10)
  batches = validation_batches(val, 4)
  assert [len(b) for b in batches] == [4, 4, 2]
  np.testing.assert_array_equal(np.concatenate(batches), val)
  with pytest.raises(DataError):
    validation_batches(val, 0)


@pytest.mark.parametrize("kw, match", [
    (dict(unique_tokens=100 * L + 1), f"{100 * L + 1}.*{100 * L}"),
    (dict(unique_tokens=L - 1), "unique_tokens"),
    (dict(total_tokens=7 * L - 1), "total_tokens"),
    (dict(global_batch=7, process_count=2), "divisible"),
    (dict(global_batch=8, process_index=2, process_count=2), "process_index"),
    (dict(global_batch=0), "global_batch"),
])
def test_stream_errors(kw, match):
  with pytest.raises(DataError, match=match):
    stream(**kw)
