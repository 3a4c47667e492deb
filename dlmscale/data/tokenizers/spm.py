"""SentencePiece models (`sentencepiece:<path to .model>`), loaded from local or cloud paths."""
import numpy as np

from dlmscale.data.errors import DataError
from dlmscale.data.spec import Spec
from dlmscale.data.tokenizers import base

EOD_NAMES = ("</s>", "<|endoftext|>", "<eos>", "<|eos|>")
MASK_NAMES = ("<mask>", "[MASK]", "<|mask|>")
_CONTROL, _USER_DEFINED = 3, 4  # sentencepiece_model.proto ModelProto.SentencePiece.Type


def model_proto(model: bytes, name: str):
  """The parsed ModelProto of SentencePiece model bytes; `name` labels errors."""
  try:
    from sentencepiece import sentencepiece_model_pb2  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise DataError(f"reading SentencePiece model fields needs protobuf ({e}): pip install "
                    "protobuf") from None
  proto = sentencepiece_model_pb2.ModelProto()
  try:
    proto.ParseFromString(model)
  except Exception as e:  # protobuf's DecodeError
    raise DataError(f"tokenizer {name}: not a SentencePiece model ({e}); point it at the "
                    ".model file") from None
  return proto


class SentencePieceTokenizer:
  """A SentencePiece model plus dedicated end-of-document and mask ids.

  Reserved ids are the model's own control/unused pieces when it has them (a user-defined piece
  is turned into a control piece, so text spelling it is tokenized as ordinary text), else new ids
  after the model's pieces. Pickles as the model bytes, so worker processes need no file access.
  """

  name = "sentencepiece"

  def __init__(self, model: bytes, spec: str, eod: str = "", mask: str = "",
               append_special: bool = True, max_vocab: int = 0, kind: str = "sentencepiece",
               training_spec: str | None = None):
    self._state = dict(model=model, spec=spec, eod=eod, mask=mask, append_special=append_special,
                       max_vocab=max_vocab, kind=kind, training_spec=training_spec)
    self.spec, self.kind, self.training_spec = spec, kind, training_spec
    self.name = kind
    import sentencepiece as spm  # pylint: disable=g-import-not-at-top
    self._proc = self._load(spm, model)
    self.model_pieces = self._proc.get_piece_size()
    self._to_control = []
    eod_id = self._find(eod, "eod", (self._proc.id_to_piece(self._proc.eos_id()),)
                        if self._proc.eos_id() >= 0 else EOD_NAMES)
    mask_id = self._find(mask, "mask", MASK_NAMES)
    self.eod_id, self.mask_id, self.vocab_size = base.reserve_ids(
        spec, self.model_pieces, eod_id, mask_id, append_special, max_vocab)
    if self._to_control:
      proto = model_proto(model, spec)
      for i in self._to_control:
        proto.pieces[i].type = _CONTROL
      self._proc = self._load(spm, proto.SerializeToString())
    self._model_sha256 = base.sha256_hex(model)

  def _load(self, spm, model: bytes):
    try:
      return spm.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError) as e:
      raise DataError(f"tokenizer {self.spec}: not a SentencePiece model ({e}); point it at "
                      "the .model file") from None

  def _find(self, name: str, option: str, auto_names) -> int | None:
    """The id of a piece the encoder never produces, or None; `name` empty means auto-detect."""
    proc = self._proc
    for candidate in ((name,) if name else auto_names):
      i = proc.piece_to_id(candidate)
      if proc.id_to_piece(i) != candidate:
        if name:
          raise DataError(f"tokenizer {self.spec} has no piece {name!r} for {option}=: check "
                          f"the name, or leave {option}= out to append a reserved id")
        continue
      if proc.is_control(i) or proc.is_unused(i):
        return i
      if not (proc.is_unknown(i) or proc.is_byte(i)):
        if model_proto(self._state["model"], self.spec).pieces[i].type == _USER_DEFINED:
          self._to_control.append(i)
          return i
      if name:
        raise DataError(f"tokenizer {self.spec}: piece {name!r} is ordinary text the encoder "
                        f"produces, so it cannot be the {option} id; name a control piece or "
                        f"leave {option}= out to append one")
    return None

  def encode(self, text: str) -> np.ndarray:
    return np.asarray(self._proc.encode(text), dtype=np.int32)

  def decode(self, ids) -> str:
    ids_N = np.asarray(ids, dtype=np.int64).reshape(-1)
    keep_N = (ids_N >= 0) & (ids_N < self.model_pieces)
    keep_N &= (ids_N != self.eod_id) & (ids_N != self.mask_id)
    return self._proc.decode(ids_N[keep_N].tolist())

  @property
  def ordinary_pieces(self) -> int:
    """Model pieces the encoder can produce (everything but control and unused pieces)."""
    proc = self._proc
    return sum(not (proc.is_control(i) or proc.is_unused(i)) for i in range(self.model_pieces))

  def fingerprint(self) -> str:
    # Covers what decides the ids: model bytes and the reserved ids. Not the path or kind, so a
    # trained model loaded as `sentencepiece:<file>` tokenizes and fingerprints the same.
    return base.fingerprint_of({
        "format": "sentencepiece", "model_sha256": self._model_sha256, "eod_id": self.eod_id,
        "mask_id": self.mask_id, "vocab_size": self.vocab_size, "version": 1})

  def model_bytes(self) -> bytes:
    return self._state["model"]

  def __getstate__(self):
    return self._state

  def __setstate__(self, state):
    self.__init__(**state)

  def __repr__(self) -> str:
    return f"SentencePieceTokenizer({self.spec!r}, vocab_size={self.vocab_size})"


def load(spec: Spec, model_dir: str | None = None) -> SentencePieceTokenizer:
  del model_dir  # The spec's target is the model path.
  opts = base.options_of(spec, base.RESERVE_DEFAULTS)
  canonical = base.spec_text(spec.kind, spec.target, opts, base.RESERVE_DEFAULTS)
  return SentencePieceTokenizer(base.read_model_bytes(spec.target), canonical, **opts)
