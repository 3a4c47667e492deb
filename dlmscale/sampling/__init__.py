"""Generation: AR sampling with a KV cache, DLM sampling by iterative unmasking, text in and out."""
from dlmscale.sampling.ar import ArOutput, ar_generate, sample_tokens
from dlmscale.sampling.common import left_pad
from dlmscale.sampling.dlm import REMASKING, DlmOutput, dlm_generate, unmasking_schedule
from dlmscale.sampling.text import generate_text

__all__ = ["ArOutput", "DlmOutput", "REMASKING", "ar_generate", "dlm_generate", "left_pad",
           "generate_text", "sample_tokens", "unmasking_schedule"]
