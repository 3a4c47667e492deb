"""The data modes of the CLI: --mode=prepare and --mode=fingerprint (and the `dlmscale <mode>`
subcommand form) print JSON; bad data input exits 2 with one `error:` line and writes nothing.

Every run is `python -m dlmscale.main --config=tests/configs/tiny.py` from the repo root over a
small `files:` corpus written into a tmp dir, with its own prepared-data cache
($DLMSCALE_DATA_DIR). Runs that need no other run first are started together.
"""
from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest

from _shared import BackgroundProcess, cli_env, tiny_config

REPO = Path(__file__).resolve().parents[1]
TINY = REPO / "tests" / "configs" / "tiny.py"
if str(REPO) not in sys.path:  # tiny.py imports `configs.models` from the repo root
  sys.path.insert(0, str(REPO))
TIMEOUT_S = 300
BIG_U = 10**9
RUN_AS_CONSOLE_SCRIPT = ("import sys; from dlmscale.main import run; "
                         "sys.argv = ['dlmscale', *sys.argv[1:]]; run()")


def write_corpus(root: Path) -> int:
  """40 folders of 3 text files (~50 kB): enough for tiny.py's U of 20,000 tokens."""
  n = 0
  for g in range(40):
    for f in range(3):
      path = root / f"g{g:02d}" / f"f{f}.txt"
      path.parent.mkdir(parents=True, exist_ok=True)
      words = " ".join(f"w{g}x{f}y{k}" for k in range(40 + (5 * g + f) % 17))
      path.write_text(f"<<D{g:02d}{f}>> {words}\n")
      n += 1
  return n


def tree(root: Path) -> dict[str, str]:
  """Relative path -> sha256 of every file ("dir" for directories) under root."""
  return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
          if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


def ok_json(proc) -> dict:
  """Exit 0 and stdout that is one JSON object (logs go to stderr)."""
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout)


def assert_user_error(proc, *names: str) -> str:
  """Exit code 2, no traceback, exactly one `error:` line, the last, naming each of `names`."""
  assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  lines = [line for line in proc.stderr.splitlines() if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr[-3000:]
  for name in names:
    assert name in errors[0], (name, errors[0])
  assert not proc.stdout.strip(), proc.stdout[-3000:]
  return errors[0]


@pytest.fixture(scope="module")
def cli(tmp_path_factory):
  """Runs every case: prepare and the bad-source runs first, together, then the runs that read
  what prepare wrote. Returns a dict with the results, paths and snapshots."""
  root = tmp_path_factory.mktemp("prepare_cli")
  env = cli_env(tmp_path_factory)
  cache = root / "cache"
  cache.mkdir()
  env["DLMSCALE_DATA_DIR"] = str(cache)  # where prepared_dir='' would put a corpus
  num_docs = write_corpus(root / "corpus")
  prepared = root / "prepared"
  bad_parent = root / "bad"
  bad_parent.mkdir()
  module = [sys.executable, "-m", "dlmscale.main"]
  data = [f"--config={TINY}", f"--config.data.sources=files:{root / 'corpus'}",
          "--config.data.val_fraction=0.2"]
  on_prepared = [*data, f"--config.data.prepared_dir={prepared}"]
  missing = "--config.data.sources=files:/nonexistent/*.txt"
  first = {
      "prepare": [*module, "--mode=prepare", *on_prepared],
      "missing_source": [*module, "--mode=prepare", *data, missing,
                         f"--config.data.prepared_dir={bad_parent / 'p'}"],
  }
  # Each run is mostly interpreter and JAX start-up (~3 s of CPU), so the cases share runs:
  # the mdm run is also the subcommand-form run.
  then = {
      "fp_ar": [*module, "--mode=fingerprint", *on_prepared, "--config.objectives=ar"],
      "fp_mdm_subcommand": [sys.executable, "-c", RUN_AS_CONSOLE_SCRIPT, "fingerprint",
                            *on_prepared, "--config.objectives=mdm"],
      "fp_seed1": [*module, "--mode=fingerprint", *on_prepared, "--config.objectives=ar",
                   "--config.data.seed=1"],
      "big_u": [*module, "--mode=fingerprint", *on_prepared,
                f"--config.data.unique_tokens={BIG_U}"],
  }
  started, results = {}, {}
  try:
    for name, argv in first.items():
      started[name] = BackgroundProcess(argv, env, root, name, REPO, TIMEOUT_S)
    results["prepare"] = started["prepare"].result()
    before = tree(prepared)
    for name, argv in then.items():
      started[name] = BackgroundProcess(argv, env, root, name, REPO, TIMEOUT_S)
    for name, run in started.items():
      results[name] = run.result()
  finally:
    for run in started.values():
      run.kill()
  return dict(results=results, prepared=prepared, prepared_before=before, cache=cache,
              bad_parent=bad_parent, num_docs=num_docs, corpus=root / "corpus")


def test_prepare_mode_prints_counts(cli):
  """--mode=prepare exits 0 and prints JSON whose counts are those of the meta.json and shards
  it wrote into prepared_dir."""
  out = ok_json(cli["results"]["prepare"])
  prepared = cli["prepared"]
  meta = json.loads((prepared / "meta.json").read_text())
  assert out["prepared_dir"] == str(prepared)
  for split in ("train", "val"):
    m = meta["splits"][split]
    assert out["sequences"][split] == m["num_sequences"] > 0
    assert out["tokens"][split] == m["num_tokens"]
    assert out["documents"][split] == m["num_documents"] > 0
    for shard in m["shards"]:
      assert (prepared / shard["file"]).stat().st_size == shard["bytes"]
  assert sum(out["documents"].values()) == cli["num_docs"]
  assert out["tokens"]["train"] == 32 * out["sequences"]["train"] + \
      meta["splits"]["train"]["num_tail_tokens_dropped"]
  assert out["tokenizer"]["fingerprint"] == meta["tokenizer"]["fingerprint"]
  assert [s["num_documents"] for s in out["sources"]] == [cli["num_docs"]]
  assert out["sources"][0]["spec"] == f"files:{cli['corpus']}"
  assert out["text_mb"] * 1e6 == pytest.approx(meta["num_text_bytes"])
  assert list(cli["cache"].iterdir()) == []  # an explicit prepared_dir leaves the cache alone


def test_fingerprint_mode_matches_in_process_stream(cli):
  """--mode=fingerprint prints experiment.make_stream(...).fingerprint() of the same config and the
  stream's actual sizes, without touching the prepared data."""
  from dlmscale import experiment  # noqa: PLC0415
  from dlmscale.data import open_prepared  # noqa: PLC0415
  out = ok_json(cli["results"]["fp_ar"])
  cfg = tiny_config(**{"objectives": ("ar",), "data.sources": f"files:{cli['corpus']}",
                       "data.val_fraction": 0.2, "data.prepared_dir": str(cli["prepared"])})
  data = open_prepared(str(cli["prepared"]), cfg.data)
  stream = experiment.make_stream(cfg, data)
  assert out["fingerprint"] == stream.fingerprint()
  assert {k: out[k] for k in stream.summary()} == stream.summary()
  assert out["unique_tokens_actual"] == 20_000 and out["num_steps"] == 16
  assert out["train_split_fingerprint"] == data.train.fingerprint
  assert out["val_split_fingerprint"] == data.val.fingerprint
  assert out["objectives"] == ["ar"] and out["prepared_dir"] == str(cli["prepared"])
  assert tree(cli["prepared"]) == cli["prepared_before"]


def test_fingerprint_same_for_ar_and_mdm_not_for_another_seed(cli):
  """The stream fingerprint is a property of the data config: equal for objectives=ar and =mdm
  (the latter through `dlmscale fingerprint ...`, the console script's subcommand form),
  different for data.seed=1 (same prepared splits)."""
  res = cli["results"]
  ar, mdm, seed1 = (ok_json(res[k]) for k in ("fp_ar", "fp_mdm_subcommand", "fp_seed1"))
  assert (ar["objectives"], mdm["objectives"]) == (["ar"], ["mdm"])
  assert {k: v for k, v in ar.items() if k != "objectives"} == \
      {k: v for k, v in mdm.items() if k != "objectives"}
  assert seed1["fingerprint"] != ar["fingerprint"] and seed1["seed"] == 1
  for key in ("train_split_fingerprint", "val_split_fingerprint", "val_evaluated_fingerprint"):
    assert seed1[key] == ar[key]


def test_budget_larger_than_the_corpus(cli):
  """U larger than the prepared corpus: exit 2, one error line naming U and the corpus size,
  nothing written (prepared data and cache unchanged)."""
  have = ok_json(cli["results"]["prepare"])["sequences"]["train"] * 32
  assert_user_error(cli["results"]["big_u"], f"unique_tokens={BIG_U}", str(have))
  assert tree(cli["prepared"]) == cli["prepared_before"]
  assert list(cli["cache"].iterdir()) == []


def test_missing_source_files(cli):
  """A `files:` source that matches nothing: exit 2, one error line naming it, and no prepared
  dir, temp dir or cache entry left behind."""
  assert_user_error(cli["results"]["missing_source"], "/nonexistent/*.txt")
  assert list(cli["bad_parent"].iterdir()) == []
  assert list(cli["cache"].iterdir()) == []
