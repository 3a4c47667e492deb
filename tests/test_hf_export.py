"""Hugging Face export: transformers (torch, CPU) loads the exported directory and computes the
logits dlmscale does (fp32), AR through stock classes and DLM through the shipped modeling file;
tokenizer.json encodes like dlmscale's tokenizer; unexpressible layouts are refused."""
import glob
import json
import os
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from _shared import random_params, tiny_config
from dlmscale.data.tokenizers import get_tokenizer, train_tokenizer
from dlmscale.errors import ConfigError
from dlmscale.export import export_model
from dlmscale.models.model import build_model
from dlmscale.models.transformer import ModelConfig
from dlmscale.sampling.dlm import dlm_generate

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

TOL = 1e-4  # fp32 logits of two implementations; measured ~1.5e-6 on these models
BYTE = get_tokenizer("byte")
TEXT = "def f(x):\n\treturn 'héllo → 世界 🙂'  \r\n\n    # comment\n  if x:  pass\n"


def tiny(**kw) -> ModelConfig:
  base = dict(vocab_size=320, num_layers=2, d_model=32, num_heads=4, d_ff=48, dtype="float32")
  return ModelConfig(**{**base, **kw})


def exported(tmp_path, cfg, kind, seed=1):
  model = build_model(cfg)
  params = random_params(model, seed=seed)
  out = tmp_path / f"{kind}_export"
  report = export_model(cfg, params, BYTE, kind, str(out), seq_len=64)
  return model, params, out, report


def dlmscale_logits(model, params, ids_BxL, kind, lengths_B=None):
  fn = jax.jit(lambda p, x, n: model.apply(p, x, causal=kind == "ar", lengths_B=n)[0])
  return np.asarray(fn(params, jnp.asarray(ids_BxL), lengths_B))


def hf_logits(out, kind, ids_BxL, attention_mask=None):
  if kind == "ar":
    hf = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
  else:
    hf = transformers.AutoModelForMaskedLM.from_pretrained(out, dtype=torch.float32,
                                                           trust_remote_code=True)
  with torch.no_grad():
    kw = {} if attention_mask is None else {"attention_mask": torch.tensor(attention_mask)}
    return hf, hf(torch.tensor(ids_BxL), **kw).logits.numpy()


IDS = np.random.default_rng(0).integers(0, 258, (2, 19))

CASES = {
    "qwen3_tied": (dict(), "ar", "Qwen3ForCausalLM"),
    "qwen3_untied_gqa_unscanned": (dict(tie_embeddings=False, num_kv_heads=2, scan_layers=False),
                                   "ar", "Qwen3ForCausalLM"),
    "llama_no_qk_norm_head_dim": (dict(qk_norm=False, head_dim=16, num_kv_heads=1), "ar",
                                  "LlamaForCausalLM"),
    "qwen3_moe_interleaved": (dict(num_experts=4, moe_every=2, num_layers=4, moe_d_ff=24,
                                   num_kv_heads=2), "ar", "Qwen3MoeForCausalLM"),
    "qwen3_moe_renormalized": (dict(num_experts=4, experts_per_token=2, renormalize_topk=True,
                                    tie_embeddings=False), "ar", "Qwen3MoeForCausalLM"),
    "dlm_untied_gqa": (dict(tie_embeddings=False, num_kv_heads=2), "dlm",
                       "DlmscaleForMaskedDiffusion"),
    "dlm_tied_moe": (dict(num_experts=4, moe_every=2, num_layers=4), "dlm",
                     "DlmscaleForMaskedDiffusion"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_exported_logits_equal_dlmscale(tmp_path, case):
  kw, kind, arch = CASES[case]
  cfg = tiny(**kw)
  model, params, out, report = exported(tmp_path, cfg, kind)
  assert report["architecture"] == arch
  ref_BxLxV = dlmscale_logits(model, params, IDS, kind)
  hf, got_BxLxV = hf_logits(out, kind, IDS)
  assert type(hf).__name__ == arch
  np.testing.assert_allclose(got_BxLxV, np.asarray(ref_BxLxV), atol=TOL, rtol=0)
  config = json.loads((out / "config.json").read_text())
  assert config["tie_word_embeddings"] == cfg.tie_embeddings
  if kind == "dlm":
    assert hf.config.mask_token_id == BYTE.mask_id == 257
    assert (out / "modeling_dlmscale.py").exists()


def test_dlm_padding_keys_are_hidden_like_lengths(tmp_path):
  """attention_mask in the exported model is dlmscale's lengths_B: keys past a row's length are
  invisible to every query."""
  model, params, out, _ = exported(tmp_path, tiny(num_kv_heads=2), "dlm")
  lengths_B = np.array([19, 11])
  ref = dlmscale_logits(model, params, IDS, "dlm", jnp.asarray(lengths_B))
  mask_BxL = (np.arange(19)[None] < lengths_B[:, None]).astype(np.int64)
  _, got = hf_logits(out, "dlm", IDS, mask_BxL)
  np.testing.assert_allclose(got, np.asarray(ref), atol=TOL, rtol=0)


@pytest.mark.parametrize("steps,block_length,remasking", [(8, 0, "low_confidence"),
                                                          (4, 4, "low_confidence")])
def test_dlm_generate_matches_dlmscale_sampler(tmp_path, steps, block_length, remasking):
  model, params, out, _ = exported(tmp_path, tiny(), "dlm", seed=3)
  hf = transformers.AutoModelForMaskedLM.from_pretrained(out, dtype=torch.float32,
                                                         trust_remote_code=True)
  prompts = [BYTE.encode("def add(a, b):"), BYTE.encode("x = ")]
  p = max(len(x) for x in prompts)
  prompt_BxP = np.full((2, p), BYTE.eod_id, np.int64)
  mask_BxP = np.zeros((2, p), np.int64)
  for row, ids in enumerate(prompts):
    prompt_BxP[row, p - len(ids):], mask_BxP[row, p - len(ids):] = ids, 1
  banned = (BYTE.mask_id, *range(BYTE.vocab_size, 320))
  want = dlm_generate(model, params, prompt_BxP, mask_BxP.sum(1), gen_length=8,
                      key=jax.random.key(0), mask_id=BYTE.mask_id, eod_id=BYTE.eod_id, steps=steps,
                      block_length=block_length, remasking=remasking, banned_ids=banned)
  got = hf.generate(torch.tensor(prompt_BxP), attention_mask=torch.tensor(mask_BxP),
                    max_new_tokens=8, steps=steps, block_length=block_length,
                    remasking=remasking)
  np.testing.assert_array_equal(got.numpy(), np.asarray(want.sequences))
  assert not np.isin(got.numpy()[:, p:], banned).any()


@pytest.mark.parametrize("kw,match", [
    (dict(num_experts=4, router="sigmoid"), "router='sigmoid' cannot be exported"),
    (dict(num_experts=4, num_shared_experts=1), "shared experts"),
    (dict(num_experts=4, moe_dispatch="capacity"), "capacity.*dropless"),
    (dict(num_experts=4, qk_norm=False), "always norms q and k"),
])
def test_unexpressible_moe_layouts_are_refused_before_writing(tmp_path, kw, match):
  cfg = tiny(**kw)
  with pytest.raises(ConfigError, match=match):
    export_model(cfg, random_params(build_model(cfg)), BYTE, "ar", str(tmp_path / "x"),
                 seq_len=64)
  assert not (tmp_path / "x").exists()


def test_generation_config_bans_mask_and_padding_ids(tmp_path):
  _, _, out, report = exported(tmp_path, tiny(), "ar")
  gen = json.loads((out / "generation_config.json").read_text())
  assert gen["eos_token_id"] == 256 and gen["suppress_tokens"] == [257, *range(258, 320)]
  assert report["files"] == sorted(["config.json", "generation_config.json", "model.safetensors",
                                    "special_tokens_map.json", "tokenizer.json",
                                    "tokenizer_config.json"])


def test_weights_are_sharded_with_an_index_over_the_limit(tmp_path):
  cfg = tiny()
  model, params, _, _ = exported(tmp_path, cfg, "ar")
  out = tmp_path / "sharded"
  report = export_model(cfg, params, BYTE, "ar", str(out), seq_len=64, max_shard_bytes=20_000)
  shards = [f for f in report["files"] if f.endswith(".safetensors")]
  assert len(shards) > 1
  index = json.loads((out / "model.safetensors.index.json").read_text())
  assert set(index["weight_map"].values()) == set(shards)
  _, got = hf_logits(out, "ar", IDS)
  ref = dlmscale_logits(model, params, IDS, "ar")
  np.testing.assert_allclose(got, np.asarray(ref), atol=TOL, rtol=0)


# ---- tokenizers -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def texts():
  paths = sorted(glob.glob(os.path.join(os.path.dirname(json.__file__), "*.py")))
  return [open(p, encoding="utf-8").read() for p in paths] + [textwrap.__doc__ or "", TEXT]


def _hf_json_with_eod(tmp_path, texts):
  """A byte-level BPE tokenizer.json with <|endoftext|> but no mask (dlmscale appends one)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  tok.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=350, special_tokens=["<|endoftext|>"], show_progress=False,
      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
  path = tmp_path / "tokenizer.json"
  tok.save(str(path))
  return f"hf:{path}"


@pytest.mark.parametrize("kind", ["byte", "unigram", "bpe", "hf"])
def test_tokenizer_json_encodes_like_dlmscale(tmp_path, texts, kind):
  if kind == "byte":
    tok = BYTE
  elif kind == "hf":
    tok = get_tokenizer(_hf_json_with_eod(tmp_path, texts))
  else:
    tok = train_tokenizer(f"train_sentencepiece?vocab_size=400&model_type={kind}", texts,
                          str(tmp_path / "spm"))
  cfg = tiny(vocab_size=-(-tok.vocab_size // 64) * 64)
  out = tmp_path / "export"
  export_model(cfg, random_params(build_model(cfg)), tok, "ar", str(out), seq_len=64)
  hf = transformers.AutoTokenizer.from_pretrained(out)
  for text in texts:
    assert hf.encode(text, add_special_tokens=False) == tok.encode(text).tolist()
  assert hf.decode(hf.encode(TEXT, add_special_tokens=False)) == tok.decode(tok.encode(TEXT))
  assert (hf.eos_token_id, hf.mask_token_id, hf.pad_token_id) == (tok.eod_id, tok.mask_id,
                                                                   tok.eod_id)
  assert hf.convert_tokens_to_ids(hf.mask_token) == tok.mask_id


def test_export_mode_refuses_an_unexpressible_run_before_loading_it(tmp_path):
  from dlmscale import modes  # pylint: disable=g-import-not-at-top
  cfg = tiny_config(**{"model.num_experts": 4, "model.num_shared_experts": 1})
  with pytest.raises(ConfigError, match="num_shared_experts=1 cannot be exported"):
    modes.export(cfg, str(tmp_path / "ar"), str(tmp_path / "hf"))  # no run there: not read
  assert not (tmp_path / "hf").exists()
