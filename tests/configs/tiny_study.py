"""A tiny study for the sweep tests: two unique-token budgets x {ar, mdm} on tests/configs/tiny.py.

runs("cpu"): 4 runs of 16 steps (T = 8,192 tokens) with U = 4,096 (2 epochs) or 8,192 (1 epoch),
a constant schedule (one compiled step for both budgets), a log line every step and a checkpoint
every 2 steps (so a test can interrupt a run between checkpoints).
Test-only scales: "missing_data" (the corpus is a files: path that does not exist), "invalid"
(the last run has an unknown train.schedule) and "failing" (two runs; the first fails when it
starts: a global batch of 12 does not split over 8 devices).
"""
import importlib.util
import os

_HERE = os.path.dirname(os.path.abspath(__file__))
UNIQUE = {"4k": 4096, "8k": 8192}
OBJECTIVES = ("ar", "mdm")
SCALES = ("cpu", "missing_data", "invalid", "failing")
MISSING_CORPUS = os.path.join(_HERE, "no_such_corpus", "train.txt")


def _tiny():
  spec = importlib.util.spec_from_file_location("dlmscale_tests_tiny_study_base",
                                                os.path.join(_HERE, "tiny.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _parse(arg):
  out = {}
  for item in filter(None, (s.strip() for s in (arg or "").split(","))):
    key, sep, value = item.partition("=")
    if not sep:
      raise ValueError(f"run argument {item!r} is not key=value")
    out[key.strip()] = value.strip()
  return out


def get_config(arg=None):
  a = {"unique": "4k", "objective": "ar", "scale": "cpu", "schedule": "constant", **_parse(arg)}
  unknown = set(a) - {"unique", "objective", "scale", "schedule", "batch"}
  if unknown:
    raise ValueError(f"unknown run arguments {sorted(unknown)}")
  c = _tiny().get_config()
  c.objectives = (a["objective"],)
  c.data.unique_tokens = UNIQUE[a["unique"]]
  c.train.update(schedule=a["schedule"], log_every=1, checkpoint_every=2)
  if "batch" in a:
    c.train.global_batch = int(a["batch"])
  if a["scale"] == "missing_data":
    c.data.sources = f"files:{MISSING_CORPUS}"
  return c


def runs(scale="cpu"):
  if scale not in SCALES:
    raise ValueError(f"unknown scale {scale!r}")
  if scale == "failing":
    return ["unique=4k,objective=ar,scale=failing,batch=12", "unique=4k,objective=ar,scale=failing"]
  args = [f"unique={u},objective={o},scale={scale}" for u in UNIQUE for o in OBJECTIVES]
  if scale == "invalid":
    args[-1] += ",schedule=linear"
  return args
