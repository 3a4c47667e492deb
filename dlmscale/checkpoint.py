"""Orbax checkpoints of the train state plus the data-iterator state, written atomically.

Orbax writes each step into a temporary directory and renames it when complete, so a crash never
leaves a half-written step that looks finished.
"""
from __future__ import annotations

import os

import jax
import orbax.checkpoint as ocp

from dlmscale.errors import CheckpointError


class Checkpointer:
  """Saves and restores {state, data} under `directory`, keeping the last `keep` steps."""

  def __init__(self, directory: str, *, keep: int, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_state: dict) -> None:
    self._manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=True)

  def restore(self, step: int, abstract_state):
    """Restores into the shardings of `abstract_state` (a pytree of ShapeDtypeStruct)."""
    try:
      restored = self._manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    except Exception as e:  # Orbax raises many types for damaged files; all mean the same here.
      first_line = (str(e).strip().splitlines() or [""])[0][:200]
      raise CheckpointError(
          f"checkpoint step {step} in {self.directory} is unreadable ({type(e).__name__}: "
          f"{first_line}): delete {os.path.join(self.directory, str(step))} to resume from the "
          "previous checkpoint, or use a new --workdir") from None
    _check_structure(abstract_state, restored.state, step, self.directory)
    return restored.state, restored.data

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _check_structure(expected, restored, step, directory):
  exp = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), expected)
  got = jax.tree.map(lambda x: (tuple(x.shape), str(x.dtype)), restored)
  if exp != got:
    raise CheckpointError(f"checkpoint step {step} in {directory} does not match this config's "
                          "model/optimizer shapes: use the config it was written with, or a new "
                          "--workdir")


def abstract_like(state_shardings, abstract_state):
  """ShapeDtypeStructs carrying the target shardings, for restoring straight onto the mesh."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      abstract_state, state_shardings)
