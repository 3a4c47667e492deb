"""Exports trained checkpoints to Hugging Face and measures how closely transformers reproduces them.

  python benchmarks/hf_export_parity.py --run=runs/quickstart --out=/tmp/hf_quickstart

For each objective of the run: export (dlmscale.export), then on --rows x seq_len tokens of
Python source (a third of them masked for a DLM) the max |logit difference| between
transformers (torch, fp32, CPU) and dlmscale (fp32), how often their argmax agrees, whether
tokenizer.json encodes the text to dlmscale's ids, and for a DLM whether the exported `generate`
returns exactly dlm_generate's ids. Reads each run's saved config.json as it is.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")  # an installed libtpu would otherwise be probed
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from dlmscale import config_files, experiment  # noqa: E402
from dlmscale.export import export_loaded  # noqa: E402
from dlmscale.sampling.dlm import dlm_generate  # noqa: E402
from dlmscale.sampling.text import banned_ids  # noqa: E402


def parity(run: str, objective: str, out: str, rows: int) -> dict:
  cfg = config_files.saved_config(os.path.join(run, objective, "config.json"))
  lm = experiment.load_model(cfg, run, objective)
  report = export_loaded(lm, out)
  tok = lm.tokenizer
  text = open(jnp.__file__, encoding="utf-8").read()  # jax.numpy/__init__.py: not in the corpus
  ids_BxL = tok.encode(text)[:rows * lm.seq_len].reshape(rows, lm.seq_len)
  if lm.kind == "dlm":
    masked = np.random.default_rng(0).random(ids_BxL.shape) < 1 / 3
    ids_BxL = np.where(masked, tok.mask_id, ids_BxL)
  params = jax.device_get(lm.params)
  forward = jax.jit(lambda p, x: lm.model.apply(p, x, causal=lm.kind == "ar")[0])
  want_BxLxV = np.asarray(forward(params, jnp.asarray(ids_BxL)))
  auto = (transformers.AutoModelForCausalLM if lm.kind == "ar"
          else transformers.AutoModelForMaskedLM)
  hf = auto.from_pretrained(out, dtype=torch.float32, trust_remote_code=lm.kind == "dlm")
  with torch.no_grad():
    got_BxLxV = hf(torch.tensor(ids_BxL, dtype=torch.long)).logits.numpy()
  hf_tok = transformers.AutoTokenizer.from_pretrained(out, trust_remote_code=True)
  sample = text[:4000]
  result = {"objective": objective, "step": lm.step, "architecture": report["architecture"],
            "tokens": int(ids_BxL.size),
            "max_abs_logit_diff": float(np.abs(got_BxLxV - want_BxLxV).max()),
            "max_abs_logit": float(np.abs(want_BxLxV).max()),
            "argmax_agreement": float((got_BxLxV.argmax(-1) == want_BxLxV.argmax(-1)).mean()),
            "tokenizer_ids_equal": hf_tok.encode(sample, add_special_tokens=False)
                                   == tok.encode(sample).tolist()}
  if lm.kind == "dlm":
    prompt_1xP = tok.encode("def fibonacci(n):")[None]
    want = dlm_generate(lm.model, params, prompt_1xP, gen_length=32, key=jax.random.key(0),
                        mask_id=tok.mask_id, eod_id=tok.eod_id, steps=16, block_length=8,
                        banned_ids=banned_ids(lm))
    got = hf.generate(torch.tensor(prompt_1xP, dtype=torch.long), max_new_tokens=32, steps=16,
                      block_length=8)
    result["generate_equal"] = bool(np.array_equal(got.numpy(), np.asarray(want.sequences)))
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--run", default="runs/quickstart")
  parser.add_argument("--out", default="/tmp/hf_export_parity")
  parser.add_argument("--rows", type=int, default=4)
  args = parser.parse_args()
  for objective in sorted(os.listdir(args.run)):
    if os.path.isfile(os.path.join(args.run, objective, "config.json")):
      print(parity(args.run, objective, os.path.join(args.out, objective), args.rows), flush=True)


if __name__ == "__main__":
  main()
