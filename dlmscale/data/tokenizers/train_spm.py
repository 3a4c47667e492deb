"""`train_sentencepiece?...`: a SentencePiece model trained offline on the corpus by prepare.

Deterministic: one trainer thread by default, no trainer-side shuffling, and a seeded sample
chosen by hashing each sentence's position (so the same texts give a byte-identical model).
Memory-bounded: documents stream through; at most `input_sentence_size` sentences of at most
`max_sentence_length` UTF-8 bytes are held. Documents are cut at line boundaries into such
sentences (a longer line at character boundaries), so nothing is dropped for being long.
"""
import hashlib
import heapq
import io
import os
from collections.abc import Iterable, Iterator

from dlmscale.data.errors import DataError
from dlmscale.data.spec import Spec
from dlmscale.data.tokenizers import base
from dlmscale.data.tokenizers.spm import SentencePieceTokenizer, model_proto

KIND = "train_sentencepiece"
MODEL_FILE = "tokenizer.model"
MASK_PIECE = "<mask>"
DEFAULTS = {"vocab_size": 8000, "model_type": "unigram", "character_coverage": 0.9995,
            "input_sentence_size": 100_000, "max_sentence_length": 2048, "seed": 0,
            "byte_fallback": True, "num_threads": 1}
_MODEL_TYPES = {"unigram": 1, "bpe": 2}  # trainer_spec.model_type enum values
_PREPARE = "prepare the corpus first: python -m dlmscale.main --mode=prepare --config=..."


def training_options(spec: Spec) -> dict:
  """Typed, validated options of a train_sentencepiece spec."""
  if spec.target:
    raise DataError(f"tokenizer {spec}: {KIND} takes no path (the model is trained into the "
                    "prepared corpus); write e.g. 'train_sentencepiece?vocab_size=8000'")
  opts = base.options_of(spec, DEFAULTS)
  if opts["model_type"] not in _MODEL_TYPES:
    raise DataError(f"tokenizer {spec}: model_type={opts['model_type']!r}; use one of "
                    f"{sorted(_MODEL_TYPES)}")
  for key in ("vocab_size", "input_sentence_size", "max_sentence_length", "num_threads"):
    if opts[key] < 1:
      raise DataError(f"tokenizer {spec}: {key}={opts[key]} must be positive")
  if not 0.0 < opts["character_coverage"] <= 1.0:
    raise DataError(f"tokenizer {spec}: character_coverage={opts['character_coverage']} must "
                    "be in (0, 1]")
  return opts


def canonical(spec: Spec) -> str:
  """Every option written out, so a changed default also shows as a different spec."""
  return base.spec_text(KIND, "", training_options(spec), DEFAULTS, full=True)


def sentences(texts: Iterable[str], max_bytes: int) -> Iterator[str]:
  """Whole lines grouped into sentences of at most `max_bytes` UTF-8 bytes, newlines kept."""
  for text in texts:
    buf, size = [], 0
    for line in text.splitlines(keepends=True):
      n = len(line.encode("utf-8"))
      if size + n > max_bytes and buf:
        yield "".join(buf)
        buf, size = [], 0
      if n > max_bytes:
        yield from _split_line(line, max_bytes)
        continue
      buf.append(line)
      size += n
    if buf:
      yield "".join(buf)


def _split_line(line: str, max_bytes: int) -> Iterator[str]:
  data = line.encode("utf-8")
  while data:
    cut = min(max_bytes, len(data))
    while cut < len(data) and (data[cut] & 0xC0) == 0x80:  # never split a UTF-8 sequence
      cut -= 1
    yield data[:cut].decode("utf-8")
    data = data[cut:]


def sample(items: Iterable[str], k: int, seed: int) -> list[str]:
  """A seeded sample of at most k items in stream order (bottom-k of a per-position hash)."""
  heap = []  # (-priority, position, item): the root is the largest priority kept
  for pos, item in enumerate(items):
    digest = hashlib.blake2b(f"{seed}:{pos}".encode(), digest_size=8).digest()
    priority = int.from_bytes(digest, "big")
    if len(heap) < k:
      heapq.heappush(heap, (-priority, pos, item))
    elif priority < -heap[0][0]:
      heapq.heapreplace(heap, (-priority, pos, item))
  return [item for _, _, item in sorted(heap, key=lambda e: e[1])]


def train(spec: Spec, texts: Iterable[str], out_dir: str) -> SentencePieceTokenizer:
  """Trains on `texts`, writes `<out_dir>/tokenizer.model` atomically and loads it."""
  import sentencepiece as spm  # pylint: disable=g-import-not-at-top
  opts = training_options(spec)
  chosen = sample(sentences(texts, opts["max_sentence_length"]), opts["input_sentence_size"],
                  opts["seed"])
  if not chosen:
    raise DataError(f"tokenizer {spec}: the corpus has no text to train it on; check the "
                    "corpus spec")
  buf = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(chosen), model_writer=buf, vocab_size=opts["vocab_size"],
        model_type=opts["model_type"], character_coverage=opts["character_coverage"],
        byte_fallback=opts["byte_fallback"], num_threads=opts["num_threads"],
        max_sentence_length=opts["max_sentence_length"],
        # Sampling is ours (above); the trainer's own would be unseeded.
        input_sentence_size=0, shuffle_input_sentence=False,
        # Exact round trip of code: no normalization, whitespace and newlines kept as text.
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        add_dummy_prefix=False, allow_whitespace_only_pieces=True,
        # A control symbol, unlike a user-defined one, is never matched in text.
        control_symbols=[MASK_PIECE], unk_id=0, eos_id=1, bos_id=-1, pad_id=-1,
        minloglevel=2)
  except RuntimeError as e:
    raise DataError(f"tokenizer {spec}: SentencePiece training failed ({e}); lower vocab_size "
                    "or train on more text") from None
  model = buf.getvalue()
  _write_atomic(out_dir, model)
  return _from_bytes(spec, model, os.path.join(str(out_dir), MODEL_FILE))


def _write_atomic(out_dir: str, model: bytes) -> None:
  from etils import epath  # pylint: disable=g-import-not-at-top
  out = epath.Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  if "://" in str(out_dir):
    (out / MODEL_FILE).write_bytes(model)  # object stores publish whole objects atomically
    return
  tmp = os.path.join(str(out_dir), f".{MODEL_FILE}.tmp-{os.getpid()}")
  try:
    with open(tmp, "wb") as f:
      f.write(model)
    os.replace(tmp, os.path.join(str(out_dir), MODEL_FILE))
  finally:
    if os.path.exists(tmp):  # a failed write leaves no partial file behind
      os.remove(tmp)


def load(spec: Spec, model_dir: str | None = None) -> SentencePieceTokenizer:
  """The model prepare trained into `model_dir`; its recorded trainer settings must match."""
  training_options(spec)
  if model_dir is None:
    raise DataError(f"tokenizer {spec} is trained on the corpus and needs the prepared "
                    f"corpus directory (model_dir): {_PREPARE}")
  path = os.path.join(str(model_dir), MODEL_FILE)
  try:
    model = base.read_model_bytes(path)
  except DataError:
    raise DataError(f"tokenizer {spec}: {path} is missing: {_PREPARE}") from None
  return _from_bytes(spec, model, path)


def _from_bytes(spec: Spec, model: bytes, path: str) -> SentencePieceTokenizer:
  full = canonical(spec)
  _check_trained_with(spec, model, path)
  return SentencePieceTokenizer(model, full, mask=MASK_PIECE, append_special=False, kind=KIND,
                                training_spec=full)


def _check_trained_with(spec: Spec, model: bytes, path: str) -> None:
  """Settings SentencePiece records in the model must equal the config's (seed etc. are not
  recorded there; prepare compares the full `training_spec` it saved in meta.json)."""
  opts = training_options(spec)
  ts = model_proto(model, path).trainer_spec
  type_names = {v: k for k, v in _MODEL_TYPES.items()}
  recorded = {"vocab_size": ts.vocab_size,
              "model_type": type_names.get(ts.model_type, str(ts.model_type)),
              "byte_fallback": ts.byte_fallback, "max_sentence_length": ts.max_sentence_length}
  wanted = {"vocab_size": opts["vocab_size"], "model_type": opts["model_type"],
            "byte_fallback": opts["byte_fallback"],
            "max_sentence_length": opts["max_sentence_length"]}
  if abs(ts.character_coverage - opts["character_coverage"]) > 1e-6:
    recorded["character_coverage"] = ts.character_coverage
    wanted["character_coverage"] = opts["character_coverage"]
  for key, value in wanted.items():
    if recorded[key] != value:
      raise DataError(f"tokenizer {path} was trained with {key}={recorded[key]} but the config "
                      f"asks {key}={value}: re-run prepare into a new directory, or fix the "
                      "tokenizer spec")
