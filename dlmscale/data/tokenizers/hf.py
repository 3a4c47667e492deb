"""Hugging Face `tokenizers` models (`hf:<path to tokenizer.json>`)."""
import numpy as np

from dlmscale.data.errors import DataError
from dlmscale.data.spec import Spec
from dlmscale.data.tokenizers import base
from dlmscale.optional import require

EOD_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>", "<|eos|>")
MASK_NAMES = ("<mask>", "[MASK]", "<|mask|>")


def _tokenizers_lib():
  return require("tokenizers", "hf", "an hf: tokenizer (tokenizer.json)")


class HFTokenizer:
  """A tokenizer.json plus dedicated end-of-document and mask ids.

  Only special added tokens qualify as reserved ids, and text spelling a special token is encoded
  as ordinary text, so the encoder never produces a reserved id. Pickles as the JSON string.
  """

  name = kind = "hf"
  training_spec = None

  def __init__(self, json_text: str, spec: str, eod: str = "", mask: str = "",
               append_special: bool = True, max_vocab: int = 0):
    self._state = dict(json_text=json_text, spec=spec, eod=eod, mask=mask,
                       append_special=append_special, max_vocab=max_vocab)
    self.spec = spec
    lib = _tokenizers_lib()
    try:
      self._tok = lib.Tokenizer.from_str(json_text)
    except Exception as e:  # The library raises bare Exception on malformed JSON.
      raise DataError(f"tokenizer {spec}: not a tokenizer.json ({e}); point it at the "
                      "tokenizer.json file") from None
    # Not stored in tokenizer.json; without it text like "<|endoftext|>" would become the eod id.
    self._tok.encode_special_tokens = True
    vocab = self._tok.get_vocab(with_added_tokens=True)
    self.model_pieces = max(vocab.values()) + 1 if vocab else 0
    self._special = {i for i, t in self._tok.get_added_tokens_decoder().items() if t.special}
    eod_id = self._find(eod, "eod", EOD_NAMES)
    mask_id = self._find(mask, "mask", MASK_NAMES)
    self.eod_id, self.mask_id, self.vocab_size = base.reserve_ids(
        spec, self.model_pieces, eod_id, mask_id, append_special, max_vocab)
    self._json_sha256 = base.sha256_hex(json_text.encode("utf-8"))

  def _find(self, name: str, option: str, auto_names) -> int | None:
    for candidate in ((name,) if name else auto_names):
      i = self._tok.token_to_id(candidate)
      if i is None:
        if name:
          raise DataError(f"tokenizer {self.spec} has no token {name!r} for {option}=: check "
                          f"the name, or leave {option}= out to append a reserved id")
        continue
      if i in self._special:
        return i
      if name:
        raise DataError(f"tokenizer {self.spec}: token {name!r} is not a special token, so the "
                        f"encoder can produce it; mark it special in tokenizer.json or leave "
                        f"{option}= out to append a reserved id")
    return None

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._tok.encode(text, add_special_tokens=False).ids, dtype=np.int32)

  def decode(self, ids) -> str:
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    keep_N = (ids_N >= 0) & (ids_N < self.model_pieces)
    keep_N &= (ids_N != self.eod_id) & (ids_N != self.mask_id)
    return self._tok.decode(ids_N[keep_N].tolist(), skip_special_tokens=True)

  @property
  def ordinary_pieces(self) -> int:
    return self.model_pieces - len(self._special)

  def fingerprint(self) -> str:
    return base.fingerprint_of({
        "format": "hf_tokenizers", "json_sha256": self._json_sha256, "eod_id": self.eod_id,
        "mask_id": self.mask_id, "vocab_size": self.vocab_size, "version": 1})

  def __getstate__(self):
    return self._state

  def __setstate__(self, state):
    self.__init__(**state)

  def __repr__(self) -> str:
    return f"HFTokenizer({self.spec!r}, vocab_size={self.vocab_size})"


def load(spec: Spec, model_dir: str | None = None) -> HFTokenizer:
  del model_dir  # The spec's target is the tokenizer.json path.
  opts = base.options_of(spec, base.RESERVE_DEFAULTS)
  canonical = base.spec_text(spec.kind, spec.target, opts, base.RESERVE_DEFAULTS)
  raw = base.read_model_bytes(spec.target)
  try:
    text = raw.decode("utf-8")
  except UnicodeDecodeError:
    raise DataError(f"tokenizer {canonical}: file is not UTF-8 JSON; hf: expects a "
                    "tokenizer.json (for a .model file use sentencepiece:)") from None
  return HFTokenizer(text, canonical, **opts)
