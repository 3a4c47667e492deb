"""lm-evaluation-harness adapter: the `dlmscale` model of lm-eval, for AR and DLM checkpoints.

Install the extra (`pip install -e ".[lm_eval]"`), then run lm-eval through this module, which
registers the model before handing the command line to lm-eval's own CLI:

  python -m dlmscale.lm_eval_adapter --model dlmscale \
    --model_args config=experiments/quickstart.py,workdir=runs/quickstart,objective=mdm,\
estimator=fixed_count,num_samples=128 --tasks hellaswag --batch_size 256
  python -m dlmscale.lm_eval_adapter --model_args checkpoint=runs/quickstart/ar \
    --tasks path/to/local_task.yaml

lm-eval has no plugin entry point for models: a bare `lm_eval --model dlmscale` finds the model only
in a process that has imported this module (e.g. `import dlmscale.lm_eval_adapter`
before `lm_eval.simple_evaluate(model="dlmscale", ...)`). Offline, point lm-eval at local data: a
task YAML with `dataset_path: json` and `dataset_kwargs: {data_files: {test: rows.jsonl}}`,
passed as `--tasks path/to/task.yaml` or found with `--include_path DIR`.

model_args: workdir and objective (default: the config's first), or both at once as
checkpoint=<workdir>/<objective>; config, the experiment file (FILE[:ARG] as for --config), or
without it the run's saved <workdir>/<objective>/config.json;
config_overrides ('train.lr=1e-3;eval.limit=10': ';' between them since lm-eval splits
model_args at commas); max_length, the scoring window in tokens (default: the config's
eval.max_length, whose 0 means data.seq_len, the trained window; a longer one scores long items
such as HellaSwag's on a 128-token model, with RoPE beyond the trained length; generation keeps
the trained window); estimator, num_samples, cfg_scale (DLM likelihood, see scorer.py); seed;
for DLM generation gen_length (0: the task's max_gen_toks), steps, block_length, remasking (see
dlmscale.sampling). lm-eval's --batch_size is the number of sequences per forward pass ('auto'
gives 32); its default of 1 leaves a DLM one mask sample per pass, so pass a large one.

Requests map onto the Scorer: loglikelihood -> (log p or its lower bound, greedy);
loglikelihood_rolling -> exact for AR, the configured bound for a DLM; generate_until ->
generate_text with the task's `until` strings, max_gen_toks and temperature / do_sample / top_k /
top_p (greedy unless the task samples). A prompt longer than the window keeps its last tokens.
"""
from __future__ import annotations

import ast
import dataclasses
import logging
import sys
from typing import Any, Mapping

from etils import epath

from dlmscale import config_files, storage
from dlmscale.errors import ConfigError
from dlmscale.evaluation.loaded import LoadedModel
from dlmscale.evaluation.scorer import Scorer
from dlmscale.experiment import load_model

try:
  from lm_eval.api.model import LM
  from lm_eval.api.registry import register_model
except ImportError as e:  # the adapter is an optional extra
  raise ImportError(f"the lm-eval adapter needs lm-evaluation-harness ({e}): "
                    "pip install 'dlmscale[lm_eval]'") from e

MODEL_NAME = "dlmscale"
DEFAULT_BATCH_SIZE = 32
DEFAULT_MAX_GEN_TOKS = 256  # lm-eval's default when a task names none
_GEN_KWARGS = ("until", "max_gen_toks", "do_sample", "temperature", "top_k", "top_p")

log = logging.getLogger(__name__)


# --- config files -------------------------------------------------------------------------------

def load_config(spec: str, overrides: str | Mapping[str, Any] = ""):
  """The ConfigDict of an experiment file 'FILE[:ARG]' (as --config loads it), with overrides
  'a.b=value;c=value' (or a {path: value} mapping) applied."""
  return _overridden(config_files.load_config(spec), overrides)


def _overridden(cfg, overrides: str | Mapping[str, Any]):
  items = parse_overrides(overrides) if isinstance(overrides, str) else dict(overrides)
  for key, value in items.items():
    _set_path(cfg, key, value)
  return cfg


def run_config(workdir: str, objective: str):
  """The config a run was trained with: <workdir>/<objective>/config.json over the defaults."""
  path = storage.join(workdir, objective, "config.json")  # local or gs://
  if not epath.Path(path).is_file():
    raise ConfigError(f"{path} not found: pass config=path/to/experiment.py, or the workdir and "
                      "objective of a trained run")
  return config_files.saved_config(path)


def parse_overrides(text: str) -> dict[str, Any]:
  """'a.b=1e-3;c=true;d=name' -> {'a.b': 0.001, 'c': True, 'd': 'name'} (Python literals, else
  true/false, else the raw string)."""
  out = {}
  for item in filter(None, (part.strip() for part in text.split(";"))):
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
      raise ConfigError(f"config override {item!r} is not path=value: write e.g. train.lr=1e-3")
    out[key.strip()] = _parse_value(raw.strip())
  return out


def _parse_value(raw: str):
  if raw.lower() in ("true", "false"):
    return raw.lower() == "true"
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def _set_path(cfg, path: str, value) -> None:
  *parents, leaf = path.split(".")
  node = cfg
  try:
    for name in parents:
      node = node[name]
    if leaf not in node:
      raise KeyError(leaf)
    node[leaf] = value
  except (KeyError, AttributeError, TypeError) as e:
    raise ConfigError(f"config override {path}={value!r} does not fit the config ({e!r}): "
                      "override only existing keys, with values of their type") from e


# --- generation settings ------------------------------------------------------------------------

def generation_settings(gen_kwargs: Mapping[str, Any], max_gen_toks: int) -> dict:
  """generate_text keywords from a task's gen_kwargs: stop strings, token budget and sampling.

  Greedy unless do_sample is true, or do_sample is absent and temperature > 0 (do_sample alone
  samples at temperature 1); max_gen_toks defaults to the given budget; other keys are ignored."""
  until = gen_kwargs.get("until") or []
  until = [until] if isinstance(until, str) else list(until)
  do_sample = gen_kwargs.get("do_sample")
  temperature = float(gen_kwargs.get("temperature", 1.0 if do_sample else 0.0))
  if do_sample is False or temperature <= 0:
    temperature = 0.0
  return dict(stop=tuple(s for s in until if s),
              max_new_tokens=int(gen_kwargs.get("max_gen_toks", max_gen_toks)),
              temperature=temperature, top_k=int(gen_kwargs.get("top_k") or 0),
              top_p=float(gen_kwargs.get("top_p") or 1.0))


def _batch_size(value) -> int:
  """lm-eval's --batch_size: an int, or 'auto'/'auto:N' (no auto-tuning here)."""
  if value is None or str(value).startswith("auto"):
    return DEFAULT_BATCH_SIZE
  try:
    return int(value)
  except ValueError as e:
    raise ConfigError(f"batch_size={value!r} is not an integer or 'auto': pass e.g. 64") from e


# --- the model ----------------------------------------------------------------------------------

class DlmscaleLM(LM):
  """A dlmscale checkpoint (AR or DLM) as an lm-eval model; see the module docstring."""

  def __init__(self, config: str | None = None, workdir: str | None = None,
               objective: str | None = None, config_overrides: str | Mapping = "", *,
               checkpoint: str | None = None, loaded: LoadedModel | None = None,
               estimator: str = "fixed_count", num_samples: int = 128, cfg_scale: float = 0.0,
               batch_size=None, seed: int = 0, max_length: int | None = None,
               gen_length: int = 0, steps: int = 0, block_length: int = 0,
               remasking: str = "low_confidence", device=None, max_batch_size=None):
    super().__init__()
    del device, max_batch_size  # JAX places the model on every local device; no auto batch
    if checkpoint:  # <workdir>/<objective>, as train writes it
      if workdir or objective:
        raise ConfigError("pass checkpoint=<workdir>/<objective> or workdir= and objective=, "
                          "not both")
      workdir, objective = storage.split(checkpoint)  # normpath would turn gs:// into gs:/
    if loaded is None:
      if not workdir or not (config or objective):
        raise ConfigError("model_args need workdir=run_dir and config=path/to/experiment.py "
                          "or objective=name (then the run's saved config.json is used)")
      cfg = (load_config(config, config_overrides) if config
             else _overridden(run_config(str(workdir), objective), config_overrides))
      loaded = load_model(cfg, str(workdir), objective)
    elif config or workdir:
      raise ConfigError("pass either loaded= or config= and workdir=, not both")
    self.lm = loaded
    self.batch_size = _batch_size(batch_size)
    self.max_length = scoring_window(loaded, max_length)
    self.scorer = Scorer(dataclasses.replace(loaded, seq_len=self.max_length),
                         estimator=estimator, num_samples=int(num_samples),
                         cfg_scale=float(cfg_scale), batch_size=self.batch_size, seed=int(seed))
    self.seed = int(seed)
    self.dlm_settings = dict(steps=int(steps), block_length=int(block_length),
                             remasking=str(remasking))
    self.gen_length = int(gen_length)

  @property
  def tokenizer_name(self) -> str:
    return f"dlmscale-{type(self.lm.tokenizer).__name__}"

  def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
    """(log p(continuation | context), is_greedy) per request; a lower bound for a DLM."""
    pairs = [tuple(req.args) for req in requests]
    out = [(r.logprob, r.greedy) for r in self.scorer.loglikelihood(pairs)]
    for pair, result in zip(pairs, out):
      self.cache_hook.add_partial("loglikelihood", pair, result)
    return out

  def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
    """Whole-text log-likelihood over rolling windows: exact for AR, the bound for a DLM."""
    texts = [req.args[0] for req in requests]
    out = [r.logprob for r in self.scorer.loglikelihood_rolling(texts)]
    for text, result in zip(texts, out):
      self.cache_hook.add_partial("loglikelihood_rolling", (text,), result)
    return out

  def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
    """Completions cut at the task's `until` strings; requests with the same gen_kwargs share
    batches."""
    from dlmscale.sampling import generate_text  # imported only when a task generates
    all_kwargs = [dict(req.args[1] or {}) if len(req.args) > 1 else {} for req in requests]
    unknown = sorted(set().union(*all_kwargs) - set(_GEN_KWARGS))
    if unknown:
      log.warning("dlmscale ignores gen_kwargs %s (it reads %s)", unknown, list(_GEN_KWARGS))
    settings = [self._generation_settings(kw) for kw in all_kwargs]
    groups: dict[tuple, list[int]] = {}
    for i, kw in enumerate(settings):
      groups.setdefault(_freeze(kw), []).append(i)
    out: list[str | None] = [None] * len(requests)
    for indices in groups.values():
      kw = settings[indices[0]]
      prompts = [self._fit_prompt(requests[i].args[0], kw["max_new_tokens"]) for i in indices]
      texts = generate_text(self.lm, prompts, seed=self.seed, batch_size=self.batch_size, **kw)
      for i, samples in zip(indices, texts):
        out[i] = samples[0]
        self.cache_hook.add_partial("generate_until", requests[i].args, out[i])
    return out

  def _generation_settings(self, gen_kwargs: Mapping[str, Any]) -> dict:
    kw = generation_settings(gen_kwargs, DEFAULT_MAX_GEN_TOKS)
    if self.lm.kind == "dlm":
      kw.update(self.dlm_settings)
      kw["max_new_tokens"] = self.gen_length or kw["max_new_tokens"]
    # The answer fits after eod and at least one prompt token.
    kw["max_new_tokens"] = max(1, min(kw["max_new_tokens"], self.lm.seq_len - 2))
    return kw

  def _fit_prompt(self, context: str, max_new_tokens: int) -> str:
    """The context, cut on the left so that eod + prompt + answer fit the window."""
    tok = self.lm.tokenizer
    room = self.lm.seq_len - 1 - max_new_tokens
    ids = tok.encode(context)
    if len(ids) <= room:
      return context
    for keep in range(room, 0, -1):  # a cut may decode to text that encodes longer
      text = tok.decode(ids[-keep:])
      if len(tok.encode(text)) <= room:
        return text
    return ""


def scoring_window(lm: LoadedModel, max_length) -> int:
  """The scoring window: max_length, else the run config's eval.max_length, else lm.seq_len (0
  means the same)."""
  if max_length is None:
    max_length = getattr(getattr(lm.cfg, "eval", None), "max_length", 0) or 0
  try:
    window = int(max_length)
  except (TypeError, ValueError):
    window = -1
  if window < 0 or window == 1:
    raise ConfigError(f"max_length={max_length!r} is not a window of at least 2 tokens: pass e.g. "
                      f"max_length=512, or 0 for the trained window ({lm.seq_len})")
  return window or lm.seq_len


def _freeze(settings: dict) -> tuple:
  return tuple(sorted((k, tuple(v) if isinstance(v, (list, tuple)) else v)
                      for k, v in settings.items()))


def main(argv: list[str] | None = None) -> None:
  """lm-eval's CLI with the dlmscale model registered (`--model dlmscale` is the default)."""
  from lm_eval.__main__ import cli_evaluate
  argv = list(sys.argv[1:] if argv is None else argv)
  if not any(a == "--model" or a.startswith("--model=") for a in argv):
    argv = ["--model", MODEL_NAME, *argv]
  sys.argv = [sys.argv[0], *argv]
  cli_evaluate()


# Registered under the module's import name only: `python -m` runs a second copy as __main__,
# which hands over to the imported module (lm-eval refuses one name for two classes).
if __name__ == "__main__":
  from dlmscale import lm_eval_adapter
  lm_eval_adapter.main()
else:
  register_model(MODEL_NAME)(DlmscaleLM)
