"""Planning a sweep: the study's runs at a scale, each named, built, validated and its corpus
checked before anything is launched or written."""
from __future__ import annotations

import dataclasses
import hashlib
import os
import re
from typing import Any

from dlmscale import config as config_lib
from dlmscale import config_files
from dlmscale.data import prepared as prepared_lib
from dlmscale.data import sources as sources_lib
from dlmscale.data.prepare import check_local, read_meta
from dlmscale.data.prepare_spec import PrepareSpec, check_same_spec
from dlmscale.errors import DlmscaleError

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_MAX_NAME = 96


class SweepFailed(DlmscaleError):
  """Some runs failed or stopped; the others were completed."""


class SweepInterrupted(Exception):
  """SIGTERM/SIGINT reached the sweep; its running runs saved a checkpoint."""


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a study: its arguments, its config file spec, where it trains, its config."""
  name: str
  arg: str
  config_spec: str
  workdir: str
  cfg: Any = dataclasses.field(default=None, repr=False, compare=False)

  @property
  def unique_tokens(self) -> int:
    return int(self.cfg.data.unique_tokens)

  @property
  def total_tokens(self) -> int:
    return int(self.cfg.data.total_tokens)

  @property
  def epochs(self) -> float:
    return self.total_tokens / self.unique_tokens


def _one_line(e: BaseException) -> str:
  return " ".join(str(e).split()) or type(e).__name__


def load_study(path: str):
  """The study module at `path` (its checkout's `configs` importable)."""
  try:
    module = config_files.load_module(path, "dlmscale_study_"
                                      + hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:12])
  except DlmscaleError as e:
    raise DlmscaleError(f"study {e}") from None
  if not callable(getattr(module, "runs", None)):
    raise DlmscaleError(f"study file {path!r} has no runs(): a study defines get_config(arg) and "
                        "runs(scale) -> list of run argument strings")
  return module


def study_runs(module, path: str, scale: str) -> list[str]:
  """The run argument strings of the study at `scale`."""
  scales = getattr(module, "SCALES", None)
  if scales is not None and scale not in scales:
    raise DlmscaleError(f"unknown scale {scale!r} for study {path}: use one of "
                        f"{', '.join(map(str, scales))}")
  try:
    args = module.runs(scale)
  except DlmscaleError as e:
    raise DlmscaleError(f"study {path}: runs({scale!r}): {_one_line(e)}") from None
  except Exception as e:  # a study rejects a scale however it likes
    raise DlmscaleError(f"study {path}: runs({scale!r}) failed ({type(e).__name__}: "
                        f"{_one_line(e)}): use a scale the study defines") from None
  if isinstance(args, str) or not all(isinstance(a, str) for a in args):
    raise DlmscaleError(f"study {path}: runs({scale!r}) must return a list of argument strings "
                        "such as 'unique=0.5B,objective=mdm,scale=cpu'")
  if not args:
    raise DlmscaleError(f"study {path} has no runs at scale {scale!r}")
  return list(args)


def run_name(arg: str) -> str:
  """A readable, filesystem-safe name: `key-value` pairs joined by '_', without scale=."""
  parts = []
  for item in arg.split(","):
    key, sep, value = (s.strip() for s in item.partition("="))
    if key and key != "scale":
      parts.append(f"{key}-{value}" if sep else key)
  name = _UNSAFE.sub("-", "_".join(parts)).strip(".-_") or "run"
  if len(name) > _MAX_NAME:  # keep under filesystem limits, still unique
    name = f"{name[:_MAX_NAME - 9]}-{hashlib.sha256(arg.encode()).hexdigest()[:8]}"
  return name


def _build_config(module, run: Run):
  try:
    cfg = module.get_config(run.arg) if run.arg else module.get_config()
  except DlmscaleError as e:
    raise DlmscaleError(f"run {run.name}: {_one_line(e)}") from None
  except Exception as e:
    raise DlmscaleError(f"run {run.name} ({run.arg!r}): get_config failed ({type(e).__name__}: "
                        f"{_one_line(e)}): fix the study or its runs()") from None
  try:
    config_lib.validate(cfg)
  except DlmscaleError as e:
    raise DlmscaleError(f"run {run.name}: {e}") from None
  d = cfg.data
  if not (d.unique_tokens > 0 and d.total_tokens > 0):
    raise DlmscaleError(f"run {run.name}: data.unique_tokens ({d.unique_tokens}) and "
                        f"data.total_tokens ({d.total_tokens}) must be > 0")
  return cfg


def check_corpus(run: Run) -> None:
  """The run's corpus can be read: prepared already, or every source yields a document (read
  without preparing). A missing source is a one-line error naming the run and the fix."""
  d = run.cfg.data
  try:
    spec = PrepareSpec.from_config(d)
    directory = prepared_lib.prepared_dir(d)
    check_local(directory)
    meta = read_meta(directory)
    if meta is not None:
      check_same_spec(meta, spec, directory)
      return
    for source in spec.sources:
      docs = sources_lib.iter_documents(source, sources_lib.SourceContext(spec.on_decode_error))
      try:
        first = next(iter(docs), None)
      except DlmscaleError:
        raise
      except Exception as e:  # a source's own I/O error: name it, one line
        raise DlmscaleError(f"reading source {source!r} failed ({type(e).__name__}: "
                            f"{_one_line(e)})") from None
      finally:
        getattr(docs, "close", lambda: None)()
      if first is None:
        raise DlmscaleError(f"source {source!r} has no documents; check data.sources")
  except DlmscaleError as e:
    raise DlmscaleError(f"run {run.name}: corpus not available: {_one_line(e)}") from None


def plan_sweep(study_path: str, scale: str, workdir: str, *, check_data: bool = True
               ) -> list[Run]:
  """The study's runs at `scale`, each built, validated and (with check_data) its corpus
  checked. Raises DlmscaleError (one line) on the first problem; launches and writes nothing."""
  module = load_study(study_path)
  runs, seen = [], {}
  for arg in study_runs(module, study_path, scale):
    name = run_name(arg)
    if name in seen:
      raise DlmscaleError(f"runs {seen[name]!r} and {arg!r} of {study_path} get the same name "
                          f"{name!r}: make their arguments (besides scale=) differ")
    seen[name] = arg
    spec = f"{study_path}:{arg}" if arg else study_path
    runs.append(Run(name, arg, spec, os.path.join(workdir, name)))
  runs = [dataclasses.replace(r, cfg=_build_config(module, r)) for r in runs]
  if check_data:
    checked = set()
    for run in runs:  # runs of a study mostly share one corpus: check each corpus once
      key = PrepareSpec.from_config(run.cfg.data).key() + run.cfg.data.prepared_dir
      if key not in checked:
        check_corpus(run)
        checked.add(key)
  return runs
