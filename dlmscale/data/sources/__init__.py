"""Document sources; importing this package registers every built-in kind."""
from dlmscale.data.sources import stdlib  # noqa: F401  (registers python_stdlib)
from dlmscale.data.sources.base import (DECODE_POLICIES, Document, SourceContext, decode_utf8,
                                        iter_documents, kinds, register)

__all__ = ["DECODE_POLICIES", "Document", "SourceContext", "decode_utf8", "iter_documents",
           "kinds", "register"]
