"""Data layer: tokenizer, stdlib source, packing, corpus split and the token-matched stream."""
import numpy as np
import pytest

from dlmscale.config import default_config
from dlmscale.data import (ByteTokenizer, DataError, TokenStream, get_tokenizer, prepare,
                           open_prepared, validation_batches, validation_subset)
from dlmscale.data import sources
from dlmscale.data.packing import is_validation, pack
from dlmscale.data.spec import parse_spec, take_options

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
def stdlib64(tmp_path_factory):
  d = default_config().data
  d.update(seq_len=64, split_unit="directory")
  directory = str(tmp_path_factory.mktemp("prepared") / "stdlib64")
  prepare(d, directory)
  return open_prepared(directory, d)


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
  ctx = sources.SourceContext(on_decode_error="skip")
  names = [name for name, _ in sources.iter_documents("python_stdlib", ctx)]
  assert names == sorted(names) and len(names) == len(set(names))
  assert "os.py" in names and "json/__init__.py" in names
  for name in names:
    parts = name.split("/")
    assert not {"test", "tests", "idle_test", "site-packages"} & set(parts), name
  with_tests = [name for name, _ in sources.iter_documents("python_stdlib?include_tests=true",
                                                           ctx)]
  assert set(names) < set(with_tests)
  assert any(n.startswith("test/") for n in with_tests)
  # The test suite ships Latin-1 files on purpose: skipped and counted, never silently kept.
  assert ctx.stats["undecodable_skipped"] >= 1
  with pytest.raises(DataError, match="invalid UTF-8 at byte offset"):
    list(sources.iter_documents("python_stdlib?include_tests=true"))
  with pytest.raises(DataError, match="python_stdlib"):
    sources.iter_documents("wikipedia")


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


# ---- prepared corpus ----------------------------------------------------------------------
def test_stdlib_validation_never_in_training(stdlib64):
  c = stdlib64
  train_NxL, val_MxL = c.train.to_numpy(), c.val.to_numpy()
  assert train_NxL.shape[1] == val_MxL.shape[1] == 64
  train_rows = set(map(bytes, train_NxL))
  assert not any(bytes(r) in train_rows for r in val_MxL)
  val_meta, train_meta = c.meta["splits"]["val"], c.meta["splits"]["train"]
  assert 0 < val_meta["num_sequences_dropped_as_in_train"] < 0.15 * len(val_MxL)
  # Packing offsets differ between splits, so also search unaligned: a leaked document's
  # rows would all be found; only templated files (encodings/cp*.py) legitimately are.
  as_bytes = lambda a: np.where(a >= 256, 0, a).astype(np.uint8).tobytes()  # noqa: E731
  train_text = as_bytes(train_NxL)
  sample = val_MxL[::10]
  found = sum(as_bytes(r) in train_text for r in sample)
  assert found < 0.25 * len(sample)
  assert val_meta["num_documents"] > 0 and train_meta["num_documents"] > 0
  assert train_meta["num_sequences"] == len(train_NxL)
  assert train_meta["num_tokens"] == 64 * len(train_NxL) + train_meta["num_tail_tokens_dropped"]
  assert "import" in c.tokenizer.decode(train_NxL[:64])
  assert train_NxL.max() <= c.tokenizer.eod_id


def test_validation_subset_evenly_spaced(stdlib64):
  val_MxL = stdlib64.val.to_numpy()
  sub = validation_subset(stdlib64.val, 10)
  assert sub.shape == (10, 64) and sub.dtype == np.int32
  np.testing.assert_array_equal(sub, val_MxL[np.arange(10) * len(val_MxL) // 10])
  assert len(validation_subset(stdlib64.val, None)) == len(val_MxL)


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


@pytest.mark.parametrize("prefetch, workers", [(0, 0), (3, 0), (2, 2)])
def test_resumed_iterator_matches_uninterrupted(prefetch, workers):
  """Resume from any step gives the uninterrupted remainder, with threads or Grain processes."""
  ts = stream()
  with ts.iterator(0, prefetch=0) as it:
    full = list(it)
  assert len(full) == ts.num_steps
  k = 13
  with ts.iterator(0, prefetch=prefetch, workers=workers) as it:
    head = [next(it) for _ in range(k)]
    state = it.get_state()
  assert state == {"next_step": k}
  for got, want in zip(head, full):
    np.testing.assert_array_equal(got, want)
  with stream().iterator(0, prefetch=prefetch, workers=workers) as resumed:
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


def test_prepared_stream_equals_in_memory_stream(stdlib64):
  """Reading rows from ArrayRecord shards changes nothing: same batches, same fingerprint."""
  args = dict(unique_tokens=200 * 64, total_tokens=3 * 200 * 64, global_batch=16, seed=0)
  on_disk = TokenStream(stdlib64.train, **args)
  in_memory = TokenStream(stdlib64.train.to_numpy(), **args)
  assert on_disk.num_steps == 37 and on_disk.num_epochs == pytest.approx(37 * 16 / 200)
  for k in (0, 12, on_disk.num_steps - 1):
    np.testing.assert_array_equal(on_disk.global_batch_at(k), in_memory.global_batch_at(k))
  assert on_disk.fingerprint() == in_memory.fingerprint()
  rows = set(map(bytes, in_memory.global_batch_at(0)))
  capped = stdlib64.train[on_disk.capped_indices].astype(np.int32)
  assert rows <= set(map(bytes, capped))


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


# ---- spec strings -----------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    "python_stdlib", "files:gs://bucket/a/*.jsonl?text_field=content",
    "tfds:x/y:1.0.0?data_dir=/tmp/a b&split=train%26x",
    "files:/a/*.txt?split=re:%5Cn%3D%3D", "sentencepiece:/m.model?eod=</s>&mask=<mask>"])
def test_spec_str_round_trips(text):
  """str(spec) is what meta.json records and errors print: parsing it gives the same spec."""
  spec = parse_spec(text)
  assert parse_spec(str(spec)) == spec
  assert "%2F" not in str(spec)  # paths stay readable


def test_spec_errors_and_typed_options():
  spec = parse_spec("kind:t?n=3&flag=yes&name=a%26b")
  assert spec.kind == "kind" and spec.target == "t" and spec.options["name"] == "a&b"
  opts = take_options(spec, {"n": 1, "flag": False, "name": "", "unused": 0.5})
  assert opts == {"n": 3, "flag": True, "name": "a&b", "unused": 0.5}
  with pytest.raises(DataError, match="unknown option 'n'"):
    take_options(spec, {"flag": False, "name": ""})
  with pytest.raises(DataError, match="n='x' is not a valid int"):
    take_options(parse_spec("k?n=x"), {"n": 1})
  for bad, match in (("k?a=1&a=2", "given twice"), ("k?novalue", "not key=value"), ("", "empty")):
    with pytest.raises(DataError, match=match):
      parse_spec(bad)
