"""`heldout`: multiple choice on the run's own held-out validation text (never trained on).

Benchmarks such as HellaSwag sit at chance below ~100M parameters; on its own text a small model
is not, so a small replication still sees accuracy and delta-NLL move. Its text is the prepared corpus's validation
split: held out by document or directory, with every row that also occurs in train dropped.

An example is a context of `c` tokens and `1 + d` options of `n` tokens each (the next span):
  - a seeded sample of validation rows (at most MAX_POOL_ROWS) is read in a seeded order; each of
    the first `e` rows with a usable place gives one example, at a seeded random place where
    context + gold continuation lie in that one row, hold no end-of-document (or mask) token,
    and the context ends in a non-whitespace character (the scorer would move a trailing space,
    as lm-eval does). The gold may start mid-word: continuing the text is the skill measured;
  - each distractor is an `n`-token span of another sampled validation row (any row but the
    gold's, drawn at random) at a random place that also follows a non-whitespace character, so
    no option stands out by starting mid-indentation. Its count of whitespace characters is
    within WHITESPACE_SLACK of the gold's: runs of indentation are cheap to predict whatever the
    context, and unmatched, an indented distractor often outscores the gold (quickstart AR, n=16:
    acc 0.54 unmatched, 0.59 matched). Options differ from the gold and from each other;
  - every option round-trips: the scorer's lm-eval encoding of (context text, option text) gives
    back exactly the sampled ids, so each option is scored on exactly `n` tokens;
  - the gold index is a seeded random slot, balanced: every block of 1 + d examples puts it once
    in each slot, so any prefix (eval.limit) is balanced within one example per slot.
acc_norm divides by the option's characters (equal to acc for byte tokens of ASCII text).
Examples depend on the validation split, the tokenizer, the variant and the seed (evaluation
passes cfg.seed, mixed with TASK_SEED), never on batch size or devices; the first k examples are
the same whatever `e`.

Names: `heldout` (c=64, n=16, d=3, e=400: sized for byte-level models with 128-token rows) or
`heldout` followed by any of `_c<context>`, `_n<continuation>`, `_d<distractors>`, `_e<examples>`
in that order, e.g. `heldout_c96_n32` or `heldout_c16_n8_e100`.
"""
from __future__ import annotations

import dataclasses
import re

import numpy as np

from dlmscale.errors import ConfigError
from dlmscale.evaluation.tasks.base import Example, Task

CONTEXT_TOKENS = 64
CONTINUATION_TOKENS = 16
NUM_DISTRACTORS = 3
NUM_EXAMPLES = 400
TASK_SEED = 0x4E1D  # mixed with the run's seed, so other seeded draws of the run stay independent
MAX_POOL_ROWS = 8192  # rows read from the validation split (bounds memory on large corpora)
WHITESPACE_SLACK = 1  # a distractor's whitespace characters minus the gold's, at most
_PLACE_TRIES = 64  # random places tried per row before the row is skipped
_DRAW_TRIES = 64  # distractor draws per needed distractor before giving up
_NAME = re.compile(r"heldout(?:_c(\d+))?(?:_n(\d+))?(?:_d(\d+))?(?:_e(\d+))?")
NAME_FORMAT = "heldout[_c<context>][_n<continuation>][_d<distractors>][_e<examples>]"


@dataclasses.dataclass(frozen=True)
class Variant:
  """Sizes in tokens of the run's tokenizer; examples is the most built (fewer if the split is
  small)."""
  context: int = CONTEXT_TOKENS
  continuation: int = CONTINUATION_TOKENS
  distractors: int = NUM_DISTRACTORS
  examples: int = NUM_EXAMPLES


@dataclasses.dataclass(frozen=True)
class Item:
  """Where an example's tokens come from: indices into the validation split and token offsets.

  row, start: the gold's row and first continuation token (the context is the c tokens before);
  options: (row, start) of each option's n tokens, the gold's at index `gold`."""
  row: int
  start: int
  options: tuple[tuple[int, int], ...]
  gold: int


def is_heldout(name: str) -> bool:
  return name == "heldout" or name.startswith("heldout_")


def parse_name(name: str) -> Variant:
  """The variant a task name asks for; a ConfigError in one line for a malformed one."""
  match = _NAME.fullmatch(name)
  if not match:
    raise ConfigError(f"unknown heldout variant '{name}': write {NAME_FORMAT}, options in that "
                      "order, e.g. heldout or heldout_c96_n32")
  defaults = Variant()
  values = [int(v) if v is not None else d
            for v, d in zip(match.groups(), dataclasses.astuple(defaults))]
  variant = Variant(*values)
  if min(variant.context, variant.continuation, variant.distractors, variant.examples) < 1:
    raise ConfigError(f"task '{name}': context, continuation, distractors and examples must all "
                      "be >= 1")
  return variant


def _split_text(tokenizer, context_ids, option_ids):
  """(context text, option text) that the scorer encodes back to exactly these ids, the context
  ending in non-whitespace and the option not all whitespace; None otherwise."""
  from dlmscale.evaluation.scorer import encode_pair  # noqa: PLC0415  (pulls in jax)
  context = tokenizer.decode(context_ids)
  whole = tokenizer.decode(np.concatenate([context_ids, option_ids]))
  # Decoding the pair whole keeps a leading space that SentencePiece drops from a piece alone.
  if not context or context[-1].isspace() or not whole.startswith(context):
    return None
  option = whole[len(context):]
  if not option.strip():
    return None
  ids = encode_pair(tokenizer, context, option)
  if ids != ([int(t) for t in context_ids], [int(t) for t in option_ids]):
    return None
  return context, option


def _whitespace(text: str) -> int:
  return sum(ch.isspace() for ch in text)


def _starts_after_word(tokenizer, row_L, start: int) -> bool:
  """A distractor's place: the token before it ends in non-whitespace, as the gold's context
  does, so no option begins mid-indentation or mid-blank-line."""
  before = tokenizer.decode(row_L[start - 1:start])
  return bool(before) and not before[-1].isspace()


def build(val_MxL, tokenizer, variant: Variant, seed: int = 0,
          name: str = "heldout") -> tuple[Task, tuple[Item, ...]]:
  """The task over validation rows `val_MxL` (an array or PreparedSplit) and where each of its
  examples comes from. ConfigError when the rows are too short or hold no usable example."""
  num_rows, length = val_MxL.shape
  c, n, d = variant.context, variant.continuation, variant.distractors
  if c + n > length:
    raise ConfigError(f"task '{name}': context {c} + continuation {n} tokens do not fit the "
                      f"{length}-token validation rows; use a smaller variant, e.g. "
                      f"heldout_c{max(1, length // 2)}_n{max(1, length // 4)}")
  rng = np.random.default_rng([TASK_SEED, seed])
  pool_P = rng.choice(num_rows, size=min(num_rows, MAX_POOL_ROWS), replace=False)
  if len(pool_P) < 1 + d:
    raise ConfigError(f"task '{name}': {len(pool_P)} validation rows, fewer than the {1 + d} "
                      "options of an example; raise data.val_fraction or lower _d<distractors>")
  rows_PxL = np.asarray(val_MxL[np.sort(pool_P)])[np.argsort(np.argsort(pool_P))]
  special_PxL = (rows_PxL == tokenizer.eod_id) | (rows_PxL == tokenizer.mask_id)
  # Prefix counts of special tokens per row: whether a span is clean is then one subtraction.
  counts_PxL1 = np.concatenate([np.zeros((len(pool_P), 1), int),
                                np.cumsum(special_PxL, axis=1)], axis=1)

  def clean(p: int, first: int, last: int) -> bool:
    """Row p's tokens first..last-1 hold no end-of-document or mask token."""
    return counts_PxL1[p, last] == counts_PxL1[p, first]

  examples, items = [], []
  for p in range(len(pool_P)):
    if len(examples) == variant.examples:
      break
    i = len(examples)
    ex_rng = np.random.default_rng([TASK_SEED, seed, 1, i])
    found = None
    for start in ex_rng.permutation(np.arange(c, length - n + 1))[:_PLACE_TRIES]:
      if clean(p, start - c, start + n):
        context_ids, gold_ids = rows_PxL[p, start - c:start], rows_PxL[p, start:start + n]
        found = _split_text(tokenizer, context_ids, gold_ids)
        if found:
          break
    if not found:
      continue  # e.g. a row of whitespace or one long token run: try the next row
    context, gold_text = found
    options, sources = [gold_text], [(int(pool_P[p]), int(start))]
    for _ in range(_DRAW_TRIES * d):
      if len(options) == 1 + d:
        break
      q = int(ex_rng.integers(len(pool_P) - 1))
      q += q >= p  # any sampled row but the gold's
      s = int(ex_rng.integers(1, length - n + 1))
      if not clean(q, s - 1, s + n) or not _starts_after_word(tokenizer, rows_PxL[q], s):
        continue
      text = _split_text(tokenizer, context_ids, rows_PxL[q, s:s + n])
      if (text and text[1] not in options
          and abs(_whitespace(text[1]) - _whitespace(gold_text)) <= WHITESPACE_SLACK):
        options.append(text[1])
        sources.append((int(pool_P[q]), s))
    if len(options) < 1 + d:
      continue
    # Balanced gold slots: block b of 1 + d examples is a seeded permutation of the slots.
    gold = int(np.random.default_rng([TASK_SEED, seed, 2, i // (1 + d)])
               .permutation(1 + d)[i % (1 + d)])
    order = list(range(1, 1 + d))
    order.insert(gold, 0)
    texts = tuple(options[k] for k in order)
    examples.append(Example(contexts=(context,), continuations=texts, gold=gold,
                            choice_lengths=tuple(len(t) for t in texts)))
    items.append(Item(row=int(pool_P[p]), start=int(start),
                      options=tuple(sources[k] for k in order), gold=gold))
  if not examples:
    raise ConfigError(f"task '{name}': no usable example in {len(pool_P)} validation rows of "
                      f"{length} tokens; use a shorter context or continuation")
  return Task(name, "multiple_choice", tuple(examples)), tuple(items)


def load(name: str, lm=None, seed: int = 0, path: str | None = None) -> Task:
  """The task for LoadedModel `lm`: its run's prepared validation split (or the prepared corpus
  at `path`, which must use the model's tokenizer)."""
  # Imported here: validating a task name (config checks) need not load the data pipeline.
  from dlmscale.data import ensure_prepared, open_prepared  # noqa: PLC0415
  variant = parse_name(name)
  if lm is None:
    raise ConfigError(f"task '{name}' is built from a run's validation data: score it through "
                      "evaluate_tasks with a Scorer over a LoadedModel (e.g. --mode=eval)")
  corpus = open_prepared(path) if path else ensure_prepared(lm.cfg.data)
  if corpus.tokenizer.fingerprint() != lm.tokenizer.fingerprint():
    raise ConfigError(f"task '{name}': the prepared data at {corpus.path} uses another tokenizer "
                      "than the model; point eval.task_paths at data prepared with the run's")
  return build(corpus.val, corpus.tokenizer, variant, seed, name)[0]
