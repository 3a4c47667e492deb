"""Orbax checkpoints of the train state plus the data-iterator state: written atomically, verified
when read.

Orbax writes each step into a temporary directory and renames it when complete, so a crash never
leaves a half-written step that looks finished. Damage after that (a flipped byte in a compressed
array file can still decode) is caught by checksums of every array, taken from the state in memory
at save time and stored with the step's data state: a restore that does not reproduce them fails.
"""
from __future__ import annotations

import logging
import re

import jax
import orbax.checkpoint as ocp
from etils import epath

from dlmscale.checksums import first_mismatches, path_name, state_checksums
from dlmscale.errors import CheckpointError, RunIOError

log = logging.getLogger("dlmscale")
CHECKSUMS = "checksums"  # the key of the data state that holds them


class ShapeMismatchError(CheckpointError):
  """The checkpoint is whole but was written for other shapes (another model config)."""


class Checkpointer:
  """Saves and restores {state, data} under `directory`, keeping the last `keep` steps."""

  def __init__(self, directory, *, keep: int, async_save: bool = True):
    self.directory = _absolute(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    try:
      self._manager = ocp.CheckpointManager(
          self.directory, options=options,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": ocp.JsonCheckpointHandler()})
    except OSError as e:
      raise RunIOError(f"cannot use checkpoint directory {self.directory} ({describe_error(e)}): "
                       "fix its permissions or free space, or use another --workdir") from None
    self._saving: int | None = None  # the step whose async save may still be in flight

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict) -> None:
    """Saves asynchronously (when enabled); a failure surfaces at the next `check`/`wait`."""
    if self._saving is not None:
      self.wait()  # Orbax would wait for it anyway; this way its failure names its own step
    data_state = dict(data_state, **{CHECKSUMS: state_checksums(state)})
    try:
      self._manager.save(step, args=ocp.args.Composite(
          state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)
    except Exception as e:  # noqa: BLE001  (Orbax wraps I/O errors in several types)
      raise self._save_error(step, e) from None
    self._saving = step

  def check(self) -> None:
    """Raises RunIOError if an asynchronous save has failed since the last check."""
    try:
      self._manager.check_for_errors()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(self._saving, e) from None

  def wait(self) -> None:
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._save_error(self._saving, e) from None
    self._saving = None

  def close(self, *, quiet: bool = False) -> None:
    """Waits for the last save. `quiet` (an error is already on its way) drops a save's failure."""
    try:
      self.wait()
    except RunIOError:
      if not quiet:
        raise
    finally:
      try:
        self._manager.close()
      except Exception:  # noqa: BLE001  (a failed save was already reported)
        if not quiet:
          raise

  def restore(self, step: int, abstract_state):
    """Restores into the shardings of `abstract_state` (a pytree of ShapeDtypeStruct); any damage
    is a CheckpointError naming the step."""
    self._check_shapes(step, abstract_state)
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # noqa: BLE001  (Orbax raises many types for damaged files)
      raise CheckpointError(f"checkpoint step {step} in {self.directory} is unreadable "
                            f"({describe_error(e)}): {self._fix(step)}") from None
    data = dict(restored.data or {})
    expected = data.pop(CHECKSUMS, None)
    if expected is None:
      log.warning("checkpoint step %d in %s has no checksums (written by an older dlmscale): "
                  "not verified", step, self.directory)
    else:
      bad = first_mismatches(expected, state_checksums(restored.state))
      if bad:
        raise CheckpointError(f"checkpoint step {step} in {self.directory} is damaged: "
                              f"{', '.join(bad)} differ from the checksums written at save: "
                              f"{self._fix(step)}")
    return restored.state, data

  def restore_latest(self, abstract_state, *, fallback: bool = False):
    """(state, data, step) of the latest checkpoint, or None when there is none. With `fallback`,
    a damaged step is moved aside (to <directory>-damaged/<step>) and the one before it is tried,
    saying so; without it, damage is an error."""
    while (step := self.latest_step()) is not None:
      try:
        state, data = self.restore(step, abstract_state)
        return state, data, step
      except CheckpointError as e:
        if not fallback or isinstance(e, ShapeMismatchError):  # a config error, not damage
          raise
        aside = epath.Path(f"{self.directory}-damaged") / str(step)
        aside.parent.mkdir(parents=True, exist_ok=True)
        (epath.Path(self.directory) / str(step)).rename(aside)
        self._manager.reload()
        log.warning("%s; moved it to %s and falling back to the previous checkpoint "
                    "(train.restore_fallback)", str(e).split(": delete", 1)[0], aside)
    return None

  def _check_shapes(self, step: int, abstract_state) -> None:
    """A config whose shapes differ (a resized model) is named as such, not as damage."""
    try:
      stored = self._manager.item_metadata(step)["state"]
    except Exception:  # noqa: BLE001  (unreadable metadata: the restore reports it)
      return
    tree = getattr(stored, "tree", stored)
    got = {path_name(p): tuple(m.shape) for p, m in jax.tree_util.tree_flatten_with_path(tree)[0]
           if hasattr(m, "shape")}
    want = {path_name(p): tuple(a.shape)
            for p, a in jax.tree_util.tree_flatten_with_path(abstract_state)[0]}
    if not got:
      return
    diff = sorted(k for k in want.keys() | got.keys() if want.get(k) != got.get(k))
    if diff:
      k = diff[0]
      raise ShapeMismatchError(
          f"checkpoint step {step} in {self.directory} does not match this config's model/optimizer "
          f"shapes ({len(diff)} arrays differ, e.g. {k}: checkpoint {got.get(k, 'absent')}, config "
          f"{want.get(k, 'absent')}): use the config it was written with, or a new --workdir")

  def _fix(self, step: int) -> str:
    previous = [s for s in self.all_steps() if s < step]
    if previous:
      return (f"rerun with --config.train.restore_fallback=true to resume from step "
              f"{max(previous)}, or delete {epath.Path(self.directory) / str(step)}")
    return f"delete {epath.Path(self.directory) / str(step)} to start over, or use a new --workdir"

  def _save_error(self, step, e: Exception) -> RunIOError:
    latest = [s for s in self.all_steps() if s != step]
    last_good = f"step {max(latest)}" if latest else "none yet"
    return RunIOError(f"saving checkpoint step {step} to {self.directory} failed ({describe_error(e)}): "
                      f"free space or fix the storage, then rerun the same command to resume from "
                      f"the last good checkpoint ({last_good})")


def _absolute(directory) -> str:
  path = epath.Path(directory)
  return str(path if "://" in str(directory) else path.absolute())


def describe_error(e: BaseException) -> str:
  """The cause in a few words: the innermost OSError (ENOSPC, EACCES), the OS error inside a
  TensorStore message, else the first line of `e`."""
  seen = e
  while seen is not None:
    if isinstance(seen, OSError) and seen.strerror:
      where = f" at {seen.filename}" if seen.filename else ""
      return f"{type(seen).__name__}: {seen.strerror}{where}"
    seen = seen.__cause__ or seen.__context__
  text = str(e)
  os_error = re.search(r"([^:\]]*?) \[os_error_code='(\d+)'\]", text)
  if os_error:  # TensorStore: '... Failed to write N bytes to file 14: No space left on device'
    path = re.search(r'Failed writing: "([^"]+)"', text)
    where = f" at {path.group(1)}" if path else ""
    return f"OS error {os_error.group(2)}: {os_error.group(1).strip()}{where}"
  first_line = (text.strip().splitlines() or [""])[0]
  first_line = first_line.split(" See full TensorStore details", 1)[0]
  return f"{type(e).__name__}: {first_line[:160]}"


def abstract_like(state_shardings, abstract_state):
  """ShapeDtypeStructs carrying the target shardings, for restoring straight onto the mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, state_shardings)
