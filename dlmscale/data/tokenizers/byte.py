"""UTF-8 bytes as ids: no model file, exact round trip for any text."""
import numpy as np

from dlmscale.data.errors import DataError
from dlmscale.data.spec import Spec
from dlmscale.data.tokenizers.base import fingerprint_of


class ByteTokenizer:
  """UTF-8 bytes as ids 0..255, then end-of-document (256) and mask (257)."""

  name = "byte"
  kind = "byte"
  spec = "byte"
  eod_id = 256
  mask_id = 257
  vocab_size = 258
  ordinary_pieces = 256

  def encode(self, text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int32)

  def decode(self, ids) -> str:
    ids_N = np.asarray(ids).reshape(-1)
    # Special ids are not text; dropping them keeps decode total on any stream slice.
    return bytes(ids_N[ids_N < 256].astype(np.uint8)).decode("utf-8", errors="replace")

  def fingerprint(self) -> str:
    # Field names and values are frozen: recorded experiment fingerprints hash exactly these.
    return fingerprint_of({"name": self.name, "eod_id": self.eod_id, "mask_id": self.mask_id,
                           "vocab_size": self.vocab_size, "encoding": "utf-8", "version": 1})

  def __repr__(self) -> str:
    return "ByteTokenizer()"


def load(spec: Spec, model_dir: str | None = None) -> ByteTokenizer:
  del model_dir  # Nothing to load.
  if spec.target or spec.options:
    raise DataError(f"tokenizer {spec}: 'byte' takes no path or options; write just 'byte'")
  return ByteTokenizer()
