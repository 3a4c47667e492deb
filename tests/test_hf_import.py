"""model.init_from: HF Qwen3 / Llama / Qwen3-MoE directories (written by transformers or by
dlmscale's export) become a run's parameters; each mismatch is one error naming the tensor or
field. End to end: a trained run exported with the CLI starts a new run that adapts it."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _shared import cli_env, random_params, tiny_config
from dlmscale import experiment, runner, train
from dlmscale.config import validate
from dlmscale.data.tokenizers import get_tokenizer
from dlmscale.errors import CheckpointError, ConfigError
from dlmscale.export import export_model
from dlmscale.hf_import import load_hf_params
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

BYTE = get_tokenizer("byte")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = np.random.default_rng(0).integers(0, 258, (2, 13))


def tiny(**kw) -> ModelConfig:
  base = dict(vocab_size=320, num_layers=2, d_model=32, num_heads=4, d_ff=48, dtype="float32")
  return ModelConfig(**{**base, **kw})


def logits(model, params, causal=True):
  fn = jax.jit(lambda p, x: model.apply(p, x, causal=causal)[0])
  return np.asarray(fn(params, jnp.asarray(IDS)))


def same_tree(a, b) -> bool:
  return all(jax.tree.leaves(jax.tree.map(
      lambda x, y: np.array_equal(np.asarray(x), np.asarray(y)), a, b)))


@pytest.mark.parametrize("kw,kind", [
    (dict(tie_embeddings=False, num_kv_heads=2), "ar"),
    (dict(num_experts=4, moe_every=2, num_layers=4, moe_d_ff=24), "ar"),
    (dict(qk_norm=False, scan_layers=False), "dlm"),
])
def test_export_then_import_is_exact(tmp_path, kw, kind):
  cfg = tiny(**kw)
  model = build_model(cfg)
  params = random_params(model, seed=2)
  export_model(cfg, params, BYTE, kind, str(tmp_path), seq_len=64)
  assert same_tree(load_hf_params(str(tmp_path), model), params)


def _saved_by_transformers(tmp_path, cls, dtype=torch.float32, **kw):
  """A randomly initialised transformers model saved with save_pretrained (the hub's layout)."""
  torch.manual_seed(0)
  config_cls = {"Qwen3ForCausalLM": transformers.Qwen3Config,
                "LlamaForCausalLM": transformers.LlamaConfig}[cls]
  config = config_cls(vocab_size=320, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=8,
                      rms_norm_eps=1e-6, rope_theta=10000.0, **kw)
  hf = getattr(transformers, cls)(config)
  with torch.no_grad():  # norm scales away from 1, so a dropped or misplaced one shows
    for name, p in hf.named_parameters():
      if name.endswith("norm.weight"):
        p.add_(0.1 * torch.randn_like(p))
  hf.to(dtype).save_pretrained(tmp_path)
  return transformers.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)


@pytest.mark.parametrize("cls,kw,run", [
    ("Qwen3ForCausalLM", dict(tie_word_embeddings=False), dict(tie_embeddings=False)),
    ("LlamaForCausalLM", dict(tie_word_embeddings=True), dict(qk_norm=False)),
])
def test_import_of_a_transformers_checkpoint_reproduces_its_logits(tmp_path, cls, kw, run):
  hf = _saved_by_transformers(tmp_path, cls, **kw)
  model = build_model(tiny(num_kv_heads=2, head_dim=8, **run))
  with torch.no_grad():
    want = hf(torch.tensor(IDS)).logits.numpy()
  got = logits(model, load_hf_params(str(tmp_path), model))
  np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_bf16_checkpoint_and_tied_checkpoint_into_an_untied_run(tmp_path):
  """bf16 tensors are read exactly (as fp32); a tied checkpoint's embedding starts the head."""
  hf = _saved_by_transformers(tmp_path, "Qwen3ForCausalLM", dtype=torch.bfloat16,
                              tie_word_embeddings=True)
  model = build_model(tiny(num_kv_heads=2, head_dim=8, tie_embeddings=False))
  params = load_hf_params(str(tmp_path), model)
  np.testing.assert_array_equal(params["head"], params["embed"].T)
  with torch.no_grad():
    want = hf(torch.tensor(IDS)).logits.numpy()
  np.testing.assert_allclose(logits(model, params), want, atol=1e-4, rtol=0)


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp("qwen3")
  cfg = tiny(num_kv_heads=2, tie_embeddings=False)
  export_model(cfg, random_params(build_model(cfg)), BYTE, "ar", str(out), seq_len=64)
  return str(out)


@pytest.mark.parametrize("run,match", [
    (dict(vocab_size=384), r"tensor model\.embed_tokens\.weight has shape \(320, 32\) but the "
                           r"run's model needs \(384, 32\)"),
    (dict(num_layers=3), r"tensor model\.layers\.2\.self_attn\.q_proj\.weight is missing"),
    (dict(num_layers=1), r"tensor model\.layers\.1\.\S+ has no place in the run's model"),
    (dict(d_ff=64), r"tensor model\.layers\.0\.mlp\.gate_proj\.weight has shape \(48, 32\) but "
                    r"the run's model needs \(64, 32\)"),
    (dict(tie_embeddings=True), r"tensor lm_head\.weight has no place.*tie_embeddings=False"),
    (dict(qk_norm=False), r"tensor model\.layers\.0\.self_attn\.[kq]_norm\.weight has no place"),
    (dict(num_kv_heads=4), r"tensor model\.layers\.0\.self_attn\.k_proj\.weight has shape"),
    (dict(num_heads=2, head_dim=16, num_kv_heads=1),
     r"tensor model\.layers\.0\.self_attn\.q_norm\.weight has shape \(8,\)"),
    (dict(rope_base=1e6), r"rope_theta gives rope_base=10000\.0 but the run has "
                          r"model\.rope_base=1000000\.0"),
    (dict(num_experts=4), r"tensor model\.layers\.0\.mlp\.gate\.weight is missing"),
])
def test_mismatches_are_one_line_errors_naming_the_tensor(qwen3_dir, run, match):
  model = build_model(tiny(**{**dict(num_kv_heads=2, tie_embeddings=False), **run}))
  with pytest.raises(ConfigError, match=match) as info:
    load_hf_params(qwen3_dir, model)
  assert "\n" not in str(info.value) and "model.init_from=" in str(info.value)


def test_head_split_the_shapes_cannot_show_is_checked_on_the_config(tmp_path):
  """Without q/k norms, 4 heads of 8 and 2 heads of 16 have the same tensor shapes."""
  cfg = tiny(qk_norm=False)
  export_model(cfg, random_params(build_model(cfg)), BYTE, "ar", str(tmp_path), seq_len=64)
  with pytest.raises(ConfigError, match="num_attention_heads gives num_heads=4 but the run has "
                                        "model.num_heads=2: set model.num_heads=4"):
    load_hf_params(str(tmp_path), build_model(tiny(qk_norm=False, num_heads=2, head_dim=16)))


def test_bad_paths(tmp_path, qwen3_dir):
  model = build_model(tiny())
  with pytest.raises(CheckpointError, match="no config.json there"):
    load_hf_params(str(tmp_path), model)
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(ConfigError, match="model_type 'gpt2' is not a Qwen3/Llama layout"):
    load_hf_params(str(tmp_path), model)
  (tmp_path / "config.json").write_text((open(os.path.join(qwen3_dir, "config.json")).read()))
  with pytest.raises(CheckpointError, match="has no model.safetensors"):
    load_hf_params(str(tmp_path), model)
  cfg = tiny_config(**{"model.init_from": os.path.join(qwen3_dir, "model.safetensors")})
  with pytest.raises(ConfigError, match="names a file: point it at the Hugging Face model dir"):
    validate(cfg)


# ---- end to end: train, export with the CLI, adapt the export into a DLM run ----------------

@pytest.fixture(scope="module")
def trained_ar(tmp_path_factory):
  cfg = tiny_config(**{"objectives": ("ar",)})
  exp = experiment.build_experiment(cfg, "ar")
  workdir = tmp_path_factory.mktemp("run") / "ar"
  runner.run_training(exp, str(workdir), stop_after=4)
  params, step = experiment.restore_params(exp, str(workdir))
  return exp, workdir, jax.device_get(params), step


def _cli(tmp_path_factory, *args):
  return subprocess.run([sys.executable, "-m", "dlmscale.main", *args], cwd=ROOT,
                        env=cli_env(tmp_path_factory), capture_output=True, text=True,
                        timeout=600)


def test_cli_export_of_a_trained_run_then_init_from_it(trained_ar, tmp_path, tmp_path_factory):
  exp, workdir, params, step = trained_ar
  out = tmp_path / "hf"
  proc = _cli(tmp_path_factory, "--mode=export", f"--workdir={workdir}", f"--out={out}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(proc.stdout[proc.stdout.index("{"):])
  assert (report["objective"], report["kind"], report["step"]) == ("ar", "ar", step)
  # transformers computes the trained run's logits.
  hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  with torch.no_grad():
    want = hf(torch.tensor(IDS)).logits.numpy()
  np.testing.assert_allclose(logits(exp.model, params), want, atol=1e-4, rtol=0)
  hf_tok = transformers.AutoTokenizer.from_pretrained(out)
  tok = exp.corpus.tokenizer
  assert hf_tok.encode("def f(x):\n  return x", add_special_tokens=False) == tok.encode(
      "def f(x):\n  return x").tolist()

  # Adapt the AR export into a DLM: the new run starts from exactly the exported weights and
  # the runner trains on from them (one step of warmup moves them a little, not to a new init).
  cfg = tiny_config(**{"objectives": ("mdm",), "model.init_from": str(out)})
  dlm = experiment.build_experiment(cfg, "mdm")
  start = experiment.initial_params(dlm)
  assert same_tree(start, params)
  state = train.create_state(dlm.model, dlm.optimizer, cfg.seed, dlm.shardings, start)
  assert same_tree(jax.device_get(state["params"]), params)
  runner.run_training(dlm, str(tmp_path / "mdm"), stop_after=1)
  after, _ = experiment.restore_params(dlm, str(tmp_path / "mdm"))
  moved = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                       jax.device_get(after), params))
  fresh = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.abs(np.asarray(a) - b).max()),
                                       dlm.model.init(jax.random.key(0)), params))
  assert max(moved) < 0.02 < max(fresh)


def test_cli_export_errors_are_one_line(trained_ar, tmp_path_factory):
  _, workdir, _, _ = trained_ar
  proc = _cli(tmp_path_factory, "--mode=export", f"--workdir={workdir}")
  assert proc.returncode == 2
  assert proc.stderr.strip().splitlines()[-1] == (
      "error: --mode=export needs --out=DIR, e.g. --out=runs/quickstart/hf_ar")
