"""Source adapters on small real data: files (text, jsonl, parquet, python, gz), tfds, HF, seqio."""
import gzip
import sys

import numpy as np
import pytest

from dlmscale.data.errors import DataError
from dlmscale.data.sources import SourceContext, iter_documents, kinds


def docs(spec, ctx=None):
  return list(iter_documents(spec, ctx))


def write(path, data):
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(data if isinstance(data, bytes) else data.encode("utf-8"))
  return path


def write_parquet(path, values, row_group_size=None, binary=False):
  import pyarrow as pa
  import pyarrow.parquet as pq
  column = pa.array(values, type=pa.binary() if binary else pa.string())
  pq.write_table(pa.table({"id": list(range(len(values))), "text": column}), path,
                 row_group_size=row_group_size)
  return path


def test_kinds_registered():
  assert {"files", "tfds", "hf", "seqio"} <= set(kinds())


# ------------------------------------------------------------------------------------------- files


@pytest.fixture
def tree(tmp_path):
  """A small mixed corpus; created out of name order so sorting is really tested."""
  root = tmp_path / "corpus"
  write(root / "z.txt", "last file\n")
  write(root / "sub" / "c.jsonl", '{"text": "json one", "n": 1}\n\n{"text": "json two"}\n')
  write(root / "a.txt", "first file é\n")
  write(root / "sub" / "m.py", "def f():\n  return 1\n")
  write(root / "empty.txt", "  \n")
  write(root / ".git" / "HEAD", "ref: refs/heads/main\n")
  write(root / ".hidden.txt", "not me\n")
  write_parquet(root / "sub" / "p.parquet", ["row zero", "row one"])
  return root


def test_files_directory_reads_every_format_in_sorted_order(tree):
  ctx = SourceContext()
  assert docs(f"files:{tree}", ctx) == [
      ("a.txt", "first file é\n"),
      ("sub/c.jsonl#1", "json one"),
      ("sub/c.jsonl#3", "json two"),
      ("sub/m.py", "def f():\n  return 1\n"),
      ("sub/p.parquet#0", "row zero"),
      ("sub/p.parquet#1", "row one"),
      ("z.txt", "last file\n"),
  ]
  assert ctx.stats["empty_skipped"] == 1  # empty.txt; hidden entries are never read.


def test_files_order_is_deterministic_and_targets_keep_their_order(tree):
  first = docs(f"files:{tree}/z.txt,{tree}/sub/*.py,{tree}/a.txt")
  assert [name for name, _ in first] == ["z.txt", "m.py", "a.txt"]
  assert docs(f"files:{tree}/z.txt,{tree}/sub/*.py,{tree}/a.txt") == first


def test_files_names_are_relative_to_the_fixed_root_of_the_glob(tree):
  assert [n for n, _ in docs(f"files:{tree}/**/*.py")] == ["sub/m.py"]
  assert [n for n, _ in docs(f"files:{tree}/*/m.py")] == ["sub/m.py"]
  # One `*` component does not descend; `[...]` matches one character of a set.
  assert [n for n, _ in docs(f"files:{tree}/*.txt")] == ["a.txt", "z.txt"]
  assert [n for n, _ in docs(f"files:{tree}/[a-y].txt")] == ["a.txt"]
  assert [n for n, _ in docs(f"files:{tree.parent}/corp*/sub/*.py")] == ["corpus/sub/m.py"]
  assert [n for n, _ in docs(f"files:{tree}/a.txt")] == ["a.txt"]
  assert [n for n, _ in docs(f"files:{tree}?recursive=false")] == ["a.txt", "z.txt"]
  assert [n for n, _ in docs(f"files:{tree}?format=python")] == ["sub/m.py"]


def test_files_explicit_format_overrides_the_extension(tree):
  write(tree / "lines.txt", '{"body": "x"}\n{"body": "y"}\n')
  assert docs(f"files:{tree}/lines.txt?format=jsonl&text_field=body") == [
      ("lines.txt#1", "x"), ("lines.txt#2", "y")]
  assert docs(f"files:{tree}/sub/c.jsonl?format=text")[0][0] == "c.jsonl"


def test_gzip_and_dictzip_read_like_the_plain_file(tmp_path):
  text = "para one\nstill one\n\npara two é\n"
  jsonl = '{"text": "a"}\n{"text": "b"}\n'
  write(tmp_path / "plain" / "doc.txt", text)
  write(tmp_path / "plain" / "rows.jsonl", jsonl)
  write(tmp_path / "gz" / "doc.txt.gz", gzip.compress(text.encode()))
  write(tmp_path / "gz" / "rows.jsonl.gz", gzip.compress(jsonl.encode()))
  write(tmp_path / "dz" / "doc.dict.dz", gzip.compress(text.encode()))
  for options in ("", "?split=blankline"):
    plain = docs(f"files:{tmp_path}/plain{options}")
    packed = docs(f"files:{tmp_path}/gz{options}")
    assert [t for _, t in packed] == [t for _, t in plain]
    assert [n for n, _ in packed] == [n.replace(".txt", ".txt.gz").replace(".jsonl", ".jsonl.gz")
                                      for n, _ in plain]
  assert docs(f"files:{tmp_path}/dz?split=blankline") == [
      ("doc.dict.dz#1", "para one\nstill one"), ("doc.dict.dz#4", "para two é\n")]


def test_corrupt_gzip_is_a_data_error(tmp_path):
  write(tmp_path / "bad.txt.gz", b"not gzip at all")
  with pytest.raises(DataError, match=r"bad\.txt\.gz: cannot read"):
    docs(f"files:{tmp_path}/bad.txt.gz")


def test_split_modes_name_pieces_by_their_first_line(tmp_path):
  write(tmp_path / "t.txt", "one\r\ntwo\n\n \nthree\nfour\n\n")
  assert docs(f"files:{tmp_path}/t.txt?split=line") == [
      ("t.txt#1", "one"), ("t.txt#2", "two"), ("t.txt#5", "three"), ("t.txt#6", "four")]
  assert docs(f"files:{tmp_path}/t.txt?split=blankline") == [
      ("t.txt#1", "one\r\ntwo"), ("t.txt#5", "three\nfour")]
  write(tmp_path / "d.dict", "alpha\nfirst\n@@beta\nsecond\n@@gamma")
  # The separator is a regex; %40 is '@' URL-quoted, as any special character may be.
  assert docs(f"files:{tmp_path}/d.dict?split=re:\\n%40%40") == [
      ("d.dict#1", "alpha\nfirst"), ("d.dict#3", "beta\nsecond"), ("d.dict#5", "gamma")]
  # A regex that can match the empty string splits only where it matches something.
  assert docs(f"files:{tmp_path}/d.dict?split=re:x*") == [("d.dict#1", "alpha\nfirst\n@@beta\n"
                                                           "second\n@@gamma")]


def test_parquet_with_several_row_groups_streams_every_row(tmp_path):
  import pyarrow.parquet as pq
  values = [f"row {i}" for i in range(10)]
  values[4], values[7] = None, ""
  path = write_parquet(tmp_path / "t.parquet", values, row_group_size=3)
  assert pq.ParquetFile(path).num_row_groups == 4
  ctx = SourceContext()
  assert docs(f"files:{path}", ctx) == [(f"t.parquet#{i}", f"row {i}") for i in range(10)
                                        if i not in (4, 7)]
  assert ctx.stats["empty_skipped"] == 2
  with pytest.raises(DataError, match=r"t\.parquet: no column 'body' \(has \['id', 'text'\]\)"):
    docs(f"files:{path}?text_field=body")
  with pytest.raises(DataError, match=r"t\.parquet row 0: text field holds int"):
    docs(f"files:{path}?text_field=id")


def test_parquet_binary_column_goes_through_utf8_decoding(tmp_path):
  path = write_parquet(tmp_path / "b.parquet", [b"ok", b"ab\xffcd", b"fine"], row_group_size=2,
                       binary=True)
  with pytest.raises(DataError, match=r"b\.parquet row 1: invalid UTF-8 at byte offset 2;"):
    docs(f"files:{path}")
  ctx = SourceContext(on_decode_error="skip")
  assert docs(f"files:{path}", ctx) == [("b.parquet#0", "ok"), ("b.parquet#2", "fine")]
  assert ctx.stats["undecodable_skipped"] == 1


def test_jsonl_errors_name_file_and_line(tmp_path):
  path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": oops}\n')
  with pytest.raises(DataError, match=rf"^{path} line 3: not valid JSON .*one JSON object$"):
    docs(f"files:{path}")
  path = write(tmp_path / "missing.jsonl", '{"text": "ok"}\n{"body": "no text"}\n')
  with pytest.raises(DataError, match=rf"^{path} line 2: no field 'text' \(has \['body'\]\); "
                                      "set text_field="):
    docs(f"files:{path}")
  path = write(tmp_path / "array.jsonl", '["text"]\n')
  with pytest.raises(DataError, match=rf"^{path} line 1: no field 'text' \(has list\)"):
    docs(f"files:{path}")
  path = write(tmp_path / "number.jsonl", '{"text": 3}\n')
  with pytest.raises(DataError, match=rf"^{path} line 1: text field holds int"):
    docs(f"files:{path}")


def test_undecodable_bytes_error_with_exact_offset_or_skip_and_count(tmp_path):
  write(tmp_path / "a.txt", "good\n")
  bad = write(tmp_path / "b.txt", b"caf\xc3\xa9 \xff rest")  # The bad byte is at offset 6.
  with pytest.raises(DataError, match=rf"^{bad}: invalid UTF-8 at byte offset 6;"):
    docs(f"files:{tmp_path}")
  ctx = SourceContext(on_decode_error="skip")
  assert docs(f"files:{tmp_path}", ctx) == [("a.txt", "good\n")]
  assert ctx.stats["undecodable_skipped"] == 1


def test_undecodable_bytes_in_lines_and_pieces_name_the_line(tmp_path):
  write(tmp_path / "j.jsonl", b'{"text": "a"}\n{"text": "b\xfe"}\n{"text": "c"}\n')
  with pytest.raises(DataError, match=r"j\.jsonl line 2: invalid UTF-8 at byte offset 11;"):
    docs(f"files:{tmp_path}/j.jsonl")
  ctx = SourceContext(on_decode_error="skip")
  assert docs(f"files:{tmp_path}/j.jsonl", ctx) == [("j.jsonl#1", "a"), ("j.jsonl#3", "c")]
  write(tmp_path / "p.txt.gz", gzip.compress(b"one\n\ntw\x80o\n\nthree"))
  with pytest.raises(DataError, match=r"p\.txt\.gz line 3: invalid UTF-8 at byte offset 2;"):
    docs(f"files:{tmp_path}/p.txt.gz?split=blankline")
  ctx = SourceContext(on_decode_error="skip")
  assert docs(f"files:{tmp_path}/p.txt.gz?split=blankline", ctx) == [
      ("p.txt.gz#1", "one"), ("p.txt.gz#5", "three")]
  assert ctx.stats["undecodable_skipped"] == 1


@pytest.mark.parametrize("spec, message", [
    ("files:{d}/*.nothing", r"'.*/\*\.nothing' matched no files; check the path"),
    ("files:{d}/absent.txt", r"absent\.txt' does not exist"),
    ("files:{d}?format=python", r"matched no files ending in \.py"),
    ("files:{d}?colour=red", r"unknown option 'colour'; allowed: \['format', 'recursive', "
                             r"'split', 'text_field'\]"),
    ("files:{d}?recursive=maybe", r"recursive='maybe' is not a valid bool"),
    ("files:{d}?format=csv", r"format='csv' is not one of"),
    ("files:{d}?split=words", r"split='words' must be none, line, blankline or re:<regex>"),
    ("files:{d}?split=re:(", r"split regex '\(' is invalid"),
    ("files:{d}?format=jsonl&split=line", r"split applies to text files only"),
    ("files:", r"give a path, directory or glob"),
])
def test_files_bad_specs_are_one_line_data_errors(tmp_path, spec, message):
  write(tmp_path / "x.txt", "x")
  with pytest.raises(DataError, match=message) as e:
    docs(spec.format(d=tmp_path))
  assert "\n" not in str(e.value)


def test_same_file_twice_is_read_once_and_clashing_names_are_errors(tmp_path):
  write(tmp_path / "a" / "doc.txt", "from a")
  write(tmp_path / "b" / "doc.txt", "from b")
  assert docs(f"files:{tmp_path}/a/*.txt,{tmp_path}/a/doc.txt") == [("doc.txt", "from a")]
  with pytest.raises(DataError, match=r"get the same document name 'doc\.txt'"):
    docs(f"files:{tmp_path}/a,{tmp_path}/b")


def test_files_through_the_fsspec_backend_used_for_cloud_paths(tree, monkeypatch):
  # gs:// and s3:// paths go through epath's fsspec backend (when TensorFlow is absent). Routing
  # local paths through the same backend runs that code path (walk, open) on real files; it
  # must give exactly what the local backend gives.
  from etils.epath import backend, gpath
  expected = docs(f"files:{tree}") + docs(f"files:{tree}/**/*.py?split=line")
  monkeypatch.setitem(gpath._PREFIX_TO_BACKEND, None, backend.fsspec_backend)
  from etils import epath
  assert epath.Path(tree)._backend is backend.fsspec_backend
  assert docs(f"files:{tree}") + docs(f"files:{tree}/**/*.py?split=line") == expected


# -------------------------------------------------------------------------------------------- tfds


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """A real tfds dataset in ArrayRecord format, built without TensorFlow."""
  tfds = pytest.importorskip("tensorflow_datasets")

  class DlmscaleTinyText(tfds.core.GeneratorBasedBuilder):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
          {"text": tfds.features.Text(), "id": np.int32}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(TFDS_TRAIN),
              "test": self._generate_examples([b"bad \xff byte", b"fine"])}

    def _generate_examples(self, texts):
      for i, text in enumerate(texts):
        yield i, {"text": text, "id": i}

  data_dir = tmp_path_factory.mktemp("tfds")
  DlmscaleTinyText(data_dir=str(data_dir), file_format="array_record").download_and_prepare()
  return data_dir


TFDS_TRAIN = ["alpha é", "beta", "", "gamma", "delta"]


def test_tfds_reads_a_prepared_dataset_by_name_and_by_directory(tfds_dir):
  import tensorflow_datasets as tfds
  # tfds stores records in an order hashed from their keys; the source must keep index order.
  raw = tfds.data_source("dlmscale_tiny_text", split="train", data_dir=str(tfds_dir))
  stored = [raw[i]["text"].decode() for i in range(len(raw))]
  assert sorted(stored) == sorted(TFDS_TRAIN)
  ctx = SourceContext()
  by_name = docs(f"tfds:dlmscale_tiny_text?split=train&data_dir={tfds_dir}", ctx)
  assert by_name == [(f"train/{i}", t) for i, t in enumerate(stored) if t]
  assert ctx.stats["empty_skipped"] == 1
  # Reading the directory needs no builder code and gives the same records in the same order.
  assert docs(f"tfds:{tfds_dir}/dlmscale_tiny_text/1.0.0?split=train") == by_name
  assert docs(f"tfds:dlmscale_tiny_text:1.0.0?split=train[:2]&data_dir={tfds_dir}") == [
      (f"train[:2]/{i}", t) for i, t in enumerate(stored[:2]) if t]


def test_tfds_undecodable_text_errors_or_skips(tfds_dir):
  spec = f"tfds:dlmscale_tiny_text?split=test&data_dir={tfds_dir}"
  with pytest.raises(DataError, match=r"record test/\d: invalid UTF-8 at byte offset 4;"):
    docs(spec)
  ctx = SourceContext(on_decode_error="skip")
  assert [t for _, t in docs(spec, ctx)] == ["fine"]
  assert ctx.stats["undecodable_skipped"] == 1


@pytest.mark.parametrize("options, message", [
    ("split=validation", r"tfds could not open it \(Unknown split 'validation'"),
    ("text_field=body", r"no feature 'body' \(has \['id', 'text'\]\)"),
    ("text_field=id", r"feature 'id' is int, not text"),
])
def test_tfds_bad_specs(tfds_dir, options, message):
  with pytest.raises(DataError, match=message):
    docs(f"tfds:dlmscale_tiny_text?{options}&data_dir={tfds_dir}")


def test_tfds_unknown_dataset_does_not_download(tmp_path):
  pytest.importorskip("tensorflow_datasets")
  with pytest.raises(DataError, match=r"Dataset no_such_dataset_xyz not found"):
    docs(f"tfds:no_such_dataset_xyz?data_dir={tmp_path}")


# ---------------------------------------------------------------------------------------------- hf


@pytest.fixture(scope="module")
def hf_data(tmp_path_factory):
  datasets = pytest.importorskip("datasets")
  root = tmp_path_factory.mktemp("hf")
  train = datasets.Dataset.from_dict({"text": ["one", None, "three", ""], "n": [1, 2, 3, 4]})
  valid = datasets.Dataset.from_dict({"text": ["v0", "v1"], "n": [5, 6]})
  train.save_to_disk(str(root / "saved"))
  datasets.DatasetDict({"train": train, "validation": valid}).save_to_disk(str(root / "dict"))
  write(root / "a.jsonl", '{"text": "j0"}\n{"text": "j1"}\n')
  write(root / "b.jsonl", '{"text": "j2"}\n')
  write_parquet(root / "p.parquet", [f"p{i}" for i in range(5)], row_group_size=2)
  return root


def test_hf_save_to_disk_dataset_and_dataset_dict(hf_data):
  ctx = SourceContext()
  assert docs(f"hf:{hf_data}/saved", ctx) == [("train/0", "one"), ("train/2", "three")]
  assert ctx.stats["empty_skipped"] == 2
  assert docs(f"hf:{hf_data}/dict?split=validation") == [("validation/0", "v0"),
                                                          ("validation/1", "v1")]
  assert docs(f"hf:{hf_data}/dict") == docs(f"hf:{hf_data}/saved")


def test_hf_load_dataset_from_local_json_and_parquet_files(hf_data):
  assert docs(f"hf:json?data_files={hf_data}/b.jsonl,{hf_data}/a.jsonl") == [
      ("train/0", "j2"), ("train/1", "j0"), ("train/2", "j1")]
  assert docs(f"hf:parquet?data_files={hf_data}/p.parquet") == [
      (f"train/{i}", f"p{i}") for i in range(5)]


@pytest.mark.parametrize("spec, message", [
    ("hf:{d}/dict?split=test", r"no split 'test' \(has \['train', 'validation'\]\)"),
    ("hf:{d}/saved?text_field=body", r"no column 'body' \(has \['text', 'n'\]\)"),
    ("hf:{d}/saved?text_field=n", r"row train/0: column holds int, not a string"),
    ("hf:{d}/saved?name=x", r"name does not apply to a save_to_disk directory"),
    ("hf:json?data_files={d}/absent.jsonl", r"datasets\.load_dataset failed \(Unable to find"),
    ("hf:json?data_files={d}/a.jsonl&text_field=body", r"no column 'body' \(has \['text'\]\)"),
])
def test_hf_bad_specs(hf_data, spec, message):
  with pytest.raises(DataError, match=message) as e:
    docs(spec.format(d=hf_data))
  assert "\n" not in str(e.value)


def test_hf_binary_text_goes_through_utf8_decoding(tmp_path):
  datasets = pytest.importorskip("datasets")
  datasets.Dataset.from_dict({"text": [b"ok", b"x\xffy"]}).save_to_disk(str(tmp_path / "bin"))
  with pytest.raises(DataError, match=r"row train/1: invalid UTF-8 at byte offset 1;"):
    docs(f"hf:{tmp_path}/bin")
  ctx = SourceContext(on_decode_error="skip")
  assert docs(f"hf:{tmp_path}/bin", ctx) == [("train/0", "ok")]
  assert ctx.stats["undecodable_skipped"] == 1


# ------------------------------------------------------------------------------------------- seqio


def test_seqio_task_and_mixture_raw_text(tmp_path):
  seqio = pytest.importorskip("seqio")
  tf = pytest.importorskip("tensorflow")
  lines = write(tmp_path / "lines.txt", "line one\nline two\n")

  def dataset_fn(split, shuffle_files, seed=None):
    del shuffle_files, seed
    return tf.data.Dataset.from_tensor_slices({"text": [f"{split} a", "", f"{split} b"]})

  vocab = seqio.PassThroughVocabulary(size=256)
  features = {"targets": seqio.Feature(vocab)}
  seqio.TaskRegistry.add("dlmscale_test_fn", seqio.FunctionDataSource(
      dataset_fn, splits=["train", "validation"]), output_features=features)
  seqio.TaskRegistry.add("dlmscale_test_lines", seqio.TextLineDataSource(
      {"train": str(lines)}), output_features=features)
  seqio.MixtureRegistry.add("dlmscale_test_mix", [("dlmscale_test_lines", 1.0),
                                                  ("dlmscale_test_fn", 3.0)])
  try:
    ctx = SourceContext()
    assert docs("seqio:dlmscale_test_fn?split=validation", ctx) == [
        ("dlmscale_test_fn/validation/0", "validation a"),
        ("dlmscale_test_fn/validation/2", "validation b")]
    assert ctx.stats["empty_skipped"] == 1
    assert docs("seqio:dlmscale_test_mix") == [
        ("dlmscale_test_fn/train/0", "train a"), ("dlmscale_test_fn/train/2", "train b"),
        ("dlmscale_test_lines/train/0", "line one"), ("dlmscale_test_lines/train/1", "line two")]
    with pytest.raises(DataError, match=r"no field 'body' \(has \['text'\]\)"):
      docs("seqio:dlmscale_test_fn?text_field=body")
    with pytest.raises(DataError, match=r"has no split 'test'"):
      docs("seqio:dlmscale_test_fn?split=test")
    with pytest.raises(DataError, match=r"no seqio task or mixture 'dlmscale_absent'"):
      docs("seqio:dlmscale_absent")
  finally:
    seqio.MixtureRegistry.remove("dlmscale_test_mix")
    seqio.TaskRegistry.remove("dlmscale_test_fn")
    seqio.TaskRegistry.remove("dlmscale_test_lines")


# ---------------------------------------------------------------------------- optional dependencies


@pytest.mark.parametrize("spec, module, extra", [
    ("tfds:lm1b", "tensorflow_datasets", "tfds"),
    ("hf:wikitext", "datasets", "hf"),
    ("seqio:c4", "seqio", "seqio"),
])
def test_missing_optional_dependency_names_the_extra(monkeypatch, spec, module, extra):
  monkeypatch.setitem(sys.modules, module, None)  # Makes `import module` raise ImportError.
  with pytest.raises(DataError, match=rf"pip install 'dlmscale\[{extra}\]'$"):
    docs(spec)


def test_seqio_module_option_imports_the_registering_module():
  pytest.importorskip("seqio")
  with pytest.raises(DataError, match=r"cannot import module 'dlmscale_no_such_module'"):
    docs("seqio:c4?module=dlmscale_no_such_module")
