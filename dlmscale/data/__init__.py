"""Data: sources, tokenizers, corpus preparation and the token-matched training stream."""
from dlmscale.data.errors import DataError
from dlmscale.data.pipeline import (StreamIterator, TokenStream, validation_batches,
                                    validation_subset)
from dlmscale.data.prepare import prepare
from dlmscale.data.prepare_spec import PrepareSpec
from dlmscale.data.prepared import PreparedData, ensure_prepared, open_prepared, prepared_dir
from dlmscale.data.shards import PreparedSplit
from dlmscale.data.tokenizers import ByteTokenizer, get_tokenizer

__all__ = [
    "ByteTokenizer", "DataError", "PrepareSpec", "PreparedData", "PreparedSplit",
    "StreamIterator", "TokenStream", "ensure_prepared", "get_tokenizer", "open_prepared",
    "prepare", "prepared_dir", "validation_batches", "validation_subset",
]
