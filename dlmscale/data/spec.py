"""Spec strings name a source or tokenizer in one config value: `kind:target?key=value&key=value`.

Examples: `python_stdlib`, `files:/data/*.jsonl?text_field=content`, `tfds:lm1b?split=train`,
`sentencepiece:/models/sp.model`, `train_sentencepiece?vocab_size=8192`. One string per item keeps
specs overridable from the command line and hashable into fingerprints.
"""
import dataclasses
import urllib.parse

from dlmscale.data.errors import DataError

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})


@dataclasses.dataclass(frozen=True)
class Spec:
  kind: str
  target: str
  options: dict

  def __str__(self) -> str:
    s = f"{self.kind}:{self.target}" if self.target else self.kind
    if self.options:
      # Paths stay readable in errors and meta.json; '&', '=', '?' and '%' are still escaped.
      s += "?" + urllib.parse.urlencode(sorted(self.options.items()), safe="/:,*",
                                        quote_via=urllib.parse.quote)
    return s


def parse_spec(spec: str, what: str = "spec") -> Spec:
  """Splits `kind:target?k=v&...`; `what` names the config value in errors."""
  if not isinstance(spec, str) or not spec.strip():
    raise DataError(f"{what} must be a non-empty string like 'kind:target?key=value', got "
                    f"{spec!r}")
  head, _, query = spec.strip().partition("?")
  kind, _, target = head.partition(":")
  # Cloud paths keep their scheme: "files:gs://b/x" is kind files, target gs://b/x.
  options = {}
  for pair in filter(None, query.split("&")):
    key, eq, value = pair.partition("=")
    if not eq or not key:
      raise DataError(f"{what} {spec!r}: option {pair!r} is not key=value")
    if key in options:
      raise DataError(f"{what} {spec!r}: option {key!r} given twice")
    options[key] = urllib.parse.unquote(value)
  return Spec(kind=kind.strip(), target=target.strip(), options=options)


def split_specs(value, what: str = "spec") -> list[str]:
  """A config value holding one spec, several separated by ';', or a list/tuple of them."""
  items = value.split(";") if isinstance(value, str) else list(value)
  items = [s.strip() for s in items if s and s.strip()]
  if not items:
    raise DataError(f"{what} is empty; name at least one, e.g. 'python_stdlib'")
  return items


def take_options(spec: Spec, defaults: dict, what: str = "spec") -> dict:
  """Options typed like their defaults; unknown keys are errors naming the allowed ones."""
  unknown = sorted(set(spec.options) - set(defaults))
  if unknown:
    raise DataError(f"{what} {spec}: unknown option {unknown[0]!r}; allowed: "
                    f"{sorted(defaults) or 'none'}")
  out = dict(defaults)
  for key, raw in spec.options.items():
    default = defaults[key]
    try:
      if isinstance(default, bool):
        low = raw.lower()
        if low not in _TRUE | _FALSE:
          raise ValueError(raw)
        out[key] = low in _TRUE
      elif isinstance(default, int):
        out[key] = int(raw)
      elif isinstance(default, float):
        out[key] = float(raw)
      else:
        out[key] = raw
    except ValueError:
      raise DataError(f"{what} {spec}: option {key}={raw!r} is not a valid "
                      f"{type(default).__name__}") from None
  return out
