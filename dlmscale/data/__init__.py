"""Data: tokenizers, corpus preparation and the token-matched training stream."""
from dlmscale.data.corpus import PackedCorpus, load_corpus
from dlmscale.data.errors import DataError
from dlmscale.data.pipeline import StreamIterator, TokenStream, validation_batches
from dlmscale.data.tokenizers import ByteTokenizer, get_tokenizer

__all__ = [
    "ByteTokenizer", "DataError", "PackedCorpus", "StreamIterator", "TokenStream",
    "get_tokenizer", "load_corpus", "validation_batches",
]
