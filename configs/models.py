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

# Smaller twins of the paper's model sizes for the studies in experiments/ (configs/studies.py):
# each ladder roughly doubles like 1B / 2B / 4B / 8B. CPU counts with the byte vocabulary (320):
# TINY 127,360, CPU_260K 264,360, CPU_470K 474,144, SMALL_CPU 894,336.
CPU_260K = dict(num_layers=3, d_model=80, num_heads=4, d_ff=224, dtype="float32", vocab_size=0)
CPU_470K = dict(num_layers=4, d_model=96, num_heads=4, d_ff=256, dtype="float32", vocab_size=0)
# The "8B1A" twin of TINY: 12 experts of TINY's FFN width, top-1, so a token's compute is TINY's
# (plus a router) and the FFN parameters are 12x, as in PAPER_8B1A; total 939,904, active 128,896.
CPU_MOE_940K = dict(TINY, num_experts=12, experts_per_token=1, moe_d_ff=192)
# GPU sizes (head_dim 64), counts with the 16,384-piece vocabulary of configs/prepare_nl.py:
# 16,914,048 / 33,695,232 / 60,062,080 / 97,538,304.
GPU_17M = dict(num_layers=6, d_model=384, num_heads=6, d_ff=1024, vocab_size=0)
GPU_34M = dict(num_layers=8, d_model=512, num_heads=8, d_ff=1376, vocab_size=0)
GPU_60M = dict(num_layers=10, d_model=640, num_heads=10, d_ff=1728, vocab_size=0)
GPU_98M = dict(num_layers=12, d_model=768, num_heads=12, d_ff=2048, vocab_size=0)
# The "8B1A" twin of GPU_17M: 24 experts of half its FFN width, top-2 (12x the FFN parameters,
# GPU_17M's compute); total 94,826,112, active 16,969,344.
GPU_MOE_95M = dict(GPU_17M, num_experts=24, experts_per_token=2, moe_d_ff=512)

PRESETS = {"tiny": TINY, "small_cpu": SMALL_CPU, "1b": PAPER_1B, "8b1a": PAPER_8B1A,
           "1.7b_coder": PAPER_1P7B_CODER,
           "2b": DENSE_2B, "4b": DENSE_4B, "8b": DENSE_8B,
           "cpu_260k": CPU_260K, "cpu_470k": CPU_470K, "cpu_moe_940k": CPU_MOE_940K,
           "gpu_17m": GPU_17M, "gpu_34m": GPU_34M, "gpu_60m": GPU_60M, "gpu_98m": GPU_98M,
           "gpu_moe_95m": GPU_MOE_95M}
