"""The modeling file an exported DLM ships (`modeling_dlmscale.py`, trust_remote_code=True).

It is PyTorch + transformers source, kept here as text: dlmscale itself never imports torch. The
network is the Qwen3 layout (the checkpoint's tensor names) with bidirectional attention; its
`generate` mirrors dlmscale.sampling.dlm (low-confidence or random remasking, semi-autoregressive
blocks, greedy or Gumbel sampling), so both decode the same ids greedily.
"""

FILE_NAME = "modeling_dlmscale.py"

SOURCE = '''\
"""A masked-diffusion language model exported by dlmscale (github: dlmscale).

Bidirectional Qwen3-layout transformer: every position attends to every visible position. Masked
positions hold `config.mask_token_id`; the logits there predict the original tokens. `generate`
decodes by iterative unmasking (LLaDA-style), as dlmscale.sampling.dlm does.
"""
import math

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import MaskedLMOutput


class DlmscaleMdmConfig(PretrainedConfig):
  model_type = "dlmscale_mdm"

  def __init__(self, vocab_size=320, hidden_size=64, intermediate_size=192, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=4, head_dim=16, rms_norm_eps=1e-6,
               rope_theta=10000.0, qk_norm=True, tie_word_embeddings=True, mask_token_id=257,
               tokenizer_vocab_size=258, max_position_embeddings=128, num_experts=0,
               num_experts_per_tok=2, moe_intermediate_size=0, decoder_sparse_step=1,
               norm_topk_prob=False, **kwargs):
    self.vocab_size = vocab_size
    self.hidden_size = hidden_size
    self.intermediate_size = intermediate_size
    self.num_hidden_layers = num_hidden_layers
    self.num_attention_heads = num_attention_heads
    self.num_key_value_heads = num_key_value_heads
    self.head_dim = head_dim
    self.rms_norm_eps = rms_norm_eps
    self.rope_theta = rope_theta
    self.qk_norm = qk_norm
    self.mask_token_id = mask_token_id
    self.tokenizer_vocab_size = tokenizer_vocab_size
    self.max_position_embeddings = max_position_embeddings
    self.num_experts = num_experts
    self.num_experts_per_tok = num_experts_per_tok
    self.moe_intermediate_size = moe_intermediate_size
    self.decoder_sparse_step = decoder_sparse_step
    self.norm_topk_prob = norm_topk_prob
    super().__init__(tie_word_embeddings=tie_word_embeddings, **kwargs)


class RMSNorm(nn.Module):
  def __init__(self, dim, eps):
    super().__init__()
    self.weight = nn.Parameter(torch.ones(dim))
    self.eps = eps

  def forward(self, x):
    x32 = x.float()
    x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
    return (x32 * self.weight.float()).to(x.dtype)


def rope(x_BxNxLxH, base):
  """Rotate-half rotary embedding at positions 0..L-1."""
  length, h = x_BxNxLxH.shape[-2], x_BxNxLxH.shape[-1]
  half = h // 2
  freq = base ** (-torch.arange(half, dtype=torch.float32, device=x_BxNxLxH.device) / half)
  angle = torch.arange(length, dtype=torch.float32, device=x_BxNxLxH.device)[:, None] * freq
  sin, cos = angle.sin(), angle.cos()
  x1, x2 = x_BxNxLxH.float().chunk(2, dim=-1)
  return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x_BxNxLxH.dtype)


class Attention(nn.Module):
  def __init__(self, c):
    super().__init__()
    d, n, k, h = c.hidden_size, c.num_attention_heads, c.num_key_value_heads, c.head_dim
    self.n, self.k, self.h, self.base = n, k, h, c.rope_theta
    self.q_proj = nn.Linear(d, n * h, bias=False)
    self.k_proj = nn.Linear(d, k * h, bias=False)
    self.v_proj = nn.Linear(d, k * h, bias=False)
    self.o_proj = nn.Linear(n * h, d, bias=False)
    if c.qk_norm:
      self.q_norm = RMSNorm(h, c.rms_norm_eps)
      self.k_norm = RMSNorm(h, c.rms_norm_eps)
    self.qk_norm = c.qk_norm

  def forward(self, x_BxLxD, visible_Bx1x1xL):
    b, length, _ = x_BxLxD.shape
    q = self.q_proj(x_BxLxD).view(b, length, self.n, self.h)
    k = self.k_proj(x_BxLxD).view(b, length, self.k, self.h)
    v = self.v_proj(x_BxLxD).view(b, length, self.k, self.h)
    if self.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))
    q, k = rope(q, self.base), rope(k, self.base)
    # Query head i reads key/value head i // (n / k) (grouped-query attention).
    k = k.repeat_interleave(self.n // self.k, dim=1)
    v = v.repeat_interleave(self.n // self.k, dim=1)
    scores = (q.float() @ k.float().transpose(-1, -2)) / math.sqrt(self.h)
    scores = scores.masked_fill(~visible_Bx1x1xL, torch.finfo(torch.float32).min)
    out = (scores.softmax(-1).to(v.dtype) @ v).transpose(1, 2).reshape(b, length, -1)
    return self.o_proj(out)


class MLP(nn.Module):
  def __init__(self, d, f):
    super().__init__()
    self.gate_proj = nn.Linear(d, f, bias=False)
    self.up_proj = nn.Linear(d, f, bias=False)
    self.down_proj = nn.Linear(f, d, bias=False)

  def forward(self, x):
    return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
  """Softmax router over all experts, top-k, optionally renormalised; no token is dropped."""

  def __init__(self, c):
    super().__init__()
    f = c.moe_intermediate_size or c.intermediate_size
    self.gate = nn.Linear(c.hidden_size, c.num_experts, bias=False)
    self.experts = nn.ModuleList([MLP(c.hidden_size, f) for _ in range(c.num_experts)])
    self.top_k, self.renormalize = c.num_experts_per_tok, c.norm_topk_prob

  def forward(self, x_BxLxD):
    x_TxD = x_BxLxD.reshape(-1, x_BxLxD.shape[-1])
    probs_TxE = self.gate(x_TxD).float().softmax(-1)
    weights_TxK, experts_TxK = probs_TxE.topk(self.top_k, dim=-1)
    if self.renormalize:
      weights_TxK = weights_TxK / weights_TxK.sum(-1, keepdim=True).clamp_min(1e-9)
    y_TxD = torch.zeros_like(x_TxD)
    for e, expert in enumerate(self.experts):
      token_T, slot_T = (experts_TxK == e).nonzero(as_tuple=True)
      if token_T.numel():
        w = weights_TxK[token_T, slot_T, None].to(x_TxD.dtype)
        y_TxD.index_add_(0, token_T, w * expert(x_TxD[token_T]))
    return y_TxD.view_as(x_BxLxD)


class Block(nn.Module):
  def __init__(self, c, i):
    super().__init__()
    self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
    self.self_attn = Attention(c)
    self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
    sparse = c.num_experts > 0 and (i + 1) % c.decoder_sparse_step == 0
    self.mlp = MoE(c) if sparse else MLP(c.hidden_size, c.intermediate_size)

  def forward(self, x, visible):
    x = x + self.self_attn(self.input_layernorm(x), visible)
    return x + self.mlp(self.post_attention_layernorm(x))


class DlmscaleModel(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size)
    self.layers = nn.ModuleList([Block(c, i) for i in range(c.num_hidden_layers)])
    self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)

  def forward(self, input_ids, visible_Bx1x1xL):
    x = self.embed_tokens(input_ids)
    for layer in self.layers:
      x = layer(x, visible_Bx1x1xL)
    return self.norm(x)


class DlmscaleForMaskedDiffusion(PreTrainedModel):
  config_class = DlmscaleMdmConfig
  base_model_prefix = "model"
  _no_split_modules = ["Block"]

  def __init__(self, config):
    super().__init__(config)
    self.model = DlmscaleModel(config)
    if not config.tie_word_embeddings:
      self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
    self.post_init()

  def _init_weights(self, module):
    if isinstance(module, (nn.Linear, nn.Embedding)):
      nn.init.normal_(module.weight, std=getattr(self.config, "initializer_range", 0.02))
    elif isinstance(module, RMSNorm):
      nn.init.ones_(module.weight)

  def forward(self, input_ids, attention_mask=None, **unused):
    """Logits [B, L, V] (fp32) of every position; attention_mask [B, L] (1 = a key every query
    may attend to; padding 0) hides keys, never queries."""
    b, length = input_ids.shape
    if attention_mask is None:
      attention_mask = torch.ones(b, length, dtype=torch.bool, device=input_ids.device)
    visible = attention_mask.bool()[:, None, None, :]
    x = self.model(input_ids, visible)
    w = self.model.embed_tokens.weight if self.config.tie_word_embeddings else self.lm_head.weight
    return MaskedLMOutput(logits=F.linear(x, w).float())

  @staticmethod
  def unmasking_schedule(gen_length, steps=0, block_length=0):
    """(ids committed at each step, block of each step), as dlmscale.sampling.dlm."""
    block_length = block_length or gen_length
    if gen_length < 1 or gen_length % block_length:
      raise ValueError(f"max_new_tokens {gen_length} must be a positive multiple of "
                       f"block_length {block_length}")
    num_blocks = gen_length // block_length
    steps = steps or gen_length
    if steps % num_blocks or steps > gen_length:
      raise ValueError(f"steps={steps} must be a multiple of the {num_blocks} blocks and at most "
                       f"max_new_tokens={gen_length}")
    per_block = steps // num_blocks
    base, extra = divmod(block_length, per_block)
    commits = [base + (i < extra) for i in range(per_block)] * num_blocks
    return commits, [j for j in range(num_blocks) for _ in range(per_block)]

  @torch.no_grad()
  def generate(self, input_ids, attention_mask=None, max_new_tokens=64, steps=0, block_length=0,
               remasking="low_confidence", temperature=0.0, generator=None, **unused):
    """[B, P + max_new_tokens]: the (left-padded) prompts as given, then the generated ids.

    Each step predicts every masked position and commits the scheduled number of the current
    block's masked positions: the most confident ("low_confidence") or random ones ("random").
    temperature 0 is greedy; > 0 samples via Gumbel noise. The mask id and the padding ids past
    the tokenizer's vocabulary are never produced. Cut the answer at the first eos yourself."""
    if remasking not in ("low_confidence", "random"):
      raise ValueError(f"unknown remasking {remasking!r}: use 'low_confidence' or 'random'")
    c, dev = self.config, input_ids.device
    commits, blocks = self.unmasking_schedule(max_new_tokens, steps, block_length)
    g = max_new_tokens
    block = g // (max(blocks) + 1)
    b, p = input_ids.shape
    lengths = (attention_mask.sum(-1) if attention_mask is not None
               else torch.full((b,), p, device=dev)).long()
    # [prompt, answer of masks, padding]: every row's real tokens start at position 0.
    canvas = torch.full((b, p + g), c.eos_token_id, dtype=torch.long, device=dev)
    for r in range(b):
      n = int(lengths[r])
      canvas[r, :n] = input_ids[r, p - n:]
      canvas[r, n:n + g] = c.mask_token_id
    pos = torch.arange(p + g, device=dev)[None]
    visible = pos < (lengths + g)[:, None]
    answer = pos - lengths[:, None]
    banned = torch.zeros(c.vocab_size, dtype=torch.bool, device=dev)
    banned[c.mask_token_id] = True
    banned[c.tokenizer_vocab_size:] = True
    for step, (count, blk) in enumerate(zip(commits, blocks)):
      logits = self(canvas, attention_mask=visible).logits.masked_fill(banned, float("-inf"))
      if temperature > 0:
        u = torch.rand(logits.shape, generator=generator, device=dev).clamp(1e-20, 1.0)
        predicted = (logits - temperature * torch.log(-torch.log(u))).argmax(-1)
      else:
        predicted = logits.argmax(-1)
      if remasking == "low_confidence":
        score = (logits.gather(-1, predicted[..., None])[..., 0] - logits.logsumexp(-1)).exp()
      else:
        score = torch.rand(canvas.shape, generator=generator, device=dev)
      start = blk * block
      candidate = (canvas == c.mask_token_id) & (answer >= start) & (answer < start + block)
      score = score.masked_fill(~candidate, float("-inf"))
      # Rank by score, ties to the earlier position (a stable sort), as dlmscale does.
      order = torch.sort(-score, dim=-1, stable=True).indices
      rank = torch.sort(order, dim=-1, stable=True).indices
      commit = candidate & (rank < count)
      canvas = torch.where(commit, predicted, canvas)
    gen = torch.stack([canvas[r, int(lengths[r]):int(lengths[r]) + g] for r in range(b)])
    return torch.cat([input_ids, gen], dim=1)
'''
