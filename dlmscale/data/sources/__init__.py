"""Document sources; importing this package registers every built-in kind."""
# Each import registers its kinds; heavy dependencies are imported inside the sources.
from dlmscale.data.sources import files, hf_source, packages, seqio_source, stdlib  # noqa: F401
from dlmscale.data.sources import tfds_source  # noqa: F401
from dlmscale.data.sources.base import (DECODE_POLICIES, Document, SourceContext, decode_utf8,
                                        iter_documents, kinds, register)

__all__ = ["DECODE_POLICIES", "Document", "SourceContext", "decode_utf8", "iter_documents",
           "kinds", "register"]
