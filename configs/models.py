"""Model sizes. The paper's recipe: pre-norm RMSNorm, SwiGLU, RoPE 10000, q/k RMSNorm, no biases,
full multi-head attention, init std 0.02, no dropout. Counts below are for the given vocabulary."""

# CPU sizes for tests and the quickstart (fp32: bf16 matmuls are emulated and slow on CPU).
TINY = dict(num_layers=2, d_model=64, num_heads=4, d_ff=192, dtype="float32", vocab_size=0)
SMALL_CPU = dict(num_layers=4, d_model=128, num_heads=4, d_ff=384, dtype="float32",
                 vocab_size=0)

# The paper's "1B": GPT-2 tokenizer + mask token, vocabulary 50269, tied, sequence 2048 (~1.09B).
PAPER_1B = dict(num_layers=26, d_model=1792, num_heads=14, d_ff=4736, vocab_size=50269,
                tie_embeddings=True)
# The paper's "8B1A" MoE (its expert count / top-k are unpublished; our choice): the 1B's
# attention, width, depth and vocabulary, every FFN an MoE of 96 experts of width 592 = 4736 / 8
# with top-8 routing. A token's 8 experts are the dense 1B's FFN split 8 ways (fine-grained
# segmentation), so active compute equals the 1B's plus a [1792, 96] router per layer; 96 / 8 =
# 12x the FFN parameters gives ~8B in all. 96 divides expert axes of 8, 16, 32.
# Model.param_counts(): total 8,372,377,600; active 1,090,607,104; routed experts 7,943,749,632.
PAPER_8B1A = dict(PAPER_1B, num_experts=96, experts_per_token=8, moe_d_ff=592, moe_every=1,
                  num_shared_experts=0, router="softmax", moe_dispatch="dropless")
# The paper's "1.7B" coder: GPT-NeoX tokenizer (50277 + mask, padded), untied embeddings.
PAPER_1P7B_CODER = dict(num_layers=28, d_model=2048, num_heads=16, d_ff=6144, vocab_size=50304,
                        tie_embeddings=False)
# Larger dense models on the same recipe (head_dim 128), for the model-size study.
DENSE_2B = dict(num_layers=30, d_model=2304, num_heads=18, d_ff=6144, vocab_size=50269)
DENSE_4B = dict(num_layers=34, d_model=3072, num_heads=24, d_ff=8192, vocab_size=50269)
# "8B8A" of the sparse study: total 7,896,483,328 (non-embedding 7,690,581,504).
DENSE_8B = dict(num_layers=38, d_model=4096, num_heads=32, d_ff=11008, vocab_size=50269)

PRESETS = {"tiny": TINY, "small_cpu": SMALL_CPU, "1b": PAPER_1B, "8b1a": PAPER_8B1A,
           "1.7b_coder": PAPER_1P7B_CODER,
           "2b": DENSE_2B, "4b": DENSE_4B, "8b": DENSE_8B}
