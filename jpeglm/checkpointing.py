"""Orbax checkpoints of a run: train state, data-iterator state and run metadata together.

Each step directory holds three items: `state` (arrays, sharded, async save), `data` (the
Grain iterator state, JSON) and `meta` (the resolved config and the tokenizer model, so a
checkpoint alone is enough to sample or export). A damaged latest checkpoint is reported and
the one before it is used.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
from collections.abc import Callable

import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from jpeglm import multihost
from jpeglm.errors import JpeglmError

log = logging.getLogger("jpeglm.checkpoints")


@dataclasses.dataclass
class Restored:
  step: int
  state: object
  data: dict | None
  meta: dict


def encode_file(path: str) -> str:
  with open(path, "rb") as f:
    return base64.b64encode(f.read()).decode("ascii")


def decode_file(text: str, path: str) -> None:
  with open(path, "wb") as f:
    f.write(base64.b64decode(text))


class Checkpointer:
  """Saves every call it is given (the caller decides the cadence); keeps the newest `keep`."""

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    # Handlers named up front: a fresh manager can then read any item's metadata alone.
    self._manager = ocp.CheckpointManager(
        self.directory,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": ocp.JsonCheckpointHandler(),
                       "meta": ocp.JsonCheckpointHandler()},
        options=ocp.CheckpointManagerOptions(max_to_keep=keep,
                                             enable_async_checkpointing=asynchronous,
                                             create=True))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data: dict | None, meta: dict) -> None:
    """Starts an (asynchronous) save; the previous save is finished first by Orbax."""
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data is not None:
      items["data"] = ocp.args.JsonSave(data)
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def read_meta(self, step: int) -> dict:
    return self._manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]

  def restore(self, abstract_state, check_meta: Callable[[dict], None] | None = None,
              step: int | None = None, with_data: bool = True) -> Restored | None:
    """The newest restorable checkpoint (or `step`), onto the shardings of `abstract_state`.

    `check_meta` may raise JpeglmError when the checkpoint belongs to another model; that
    error is not a damaged checkpoint and is passed on.
    """
    candidates = [step] if step is not None else list(reversed(self.steps()))
    for candidate in candidates:
      try:
        meta = self.read_meta(candidate)
        if check_meta:
          check_meta(meta)
        _check_saved_arrays(self._manager.item_metadata(candidate)["state"], abstract_state,
                            candidate)
        items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
        # Imported weights come without a data state: their data starts from the beginning.
        has_data = (epath.Path(self.directory) / str(candidate) / "data").exists()
        if with_data and has_data:
          items["data"] = ocp.args.JsonRestore()
        restored = self._manager.restore(candidate, args=ocp.args.Composite(**items))
        return Restored(candidate, restored["state"],
                        restored.get("data") if with_data and has_data else None,
                        restored["meta"])
      except JpeglmError:
        raise
      except Exception as e:  # noqa: BLE001 - any failure to read means "damaged"
        if step is not None:
          raise JpeglmError(f"checkpoint {candidate} in {self.directory} cannot be restored: "
                            f"{str(e).splitlines()[0]}") from None
        log.warning("checkpoint %d in %s is damaged (%s); moved to %s, trying the one before it",
                    candidate, self.directory, str(e).splitlines()[0],
                    self._set_aside(candidate))
    if candidates:
      raise JpeglmError(f"no checkpoint in {self.directory} could be restored "
                        f"(tried steps {candidates})")
    return None

  def restore_params(self, abstract_params, step: int | None = None) -> Restored:
    """Only the model parameters (no optimizer state, no data state): what sampling and
    export need, at a third of the memory of a full restore."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise JpeglmError(f"no checkpoint in {self.directory}: train first")
    if step not in self.steps():
      raise JpeglmError(f"no checkpoint for step {step} in {self.directory} (have {self.steps()})")
    item = {"params": abstract_params}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding), item)
    reader = ocp.CheckpointManager(
        self.directory, item_handlers={"state": ocp.PyTreeCheckpointHandler(),
                                       "data": ocp.JsonCheckpointHandler(),
                                       "meta": ocp.JsonCheckpointHandler()})
    try:
      _check_saved_arrays(reader.item_metadata(step)["state"]["params"], abstract_params, step)
      restored = reader.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                       partial_restore=True),
          meta=ocp.args.JsonRestore()))
    finally:
      reader.close()
    return Restored(step, restored["state"]["params"], None, restored["meta"])

  def _set_aside(self, step: int) -> str:
    """Renames a damaged step directory (kept for inspection), so the step can be saved anew."""
    # epath, as Orbax itself uses: the same code renames on local disks and on gs://.
    target = epath.Path(self.directory) / f"damaged-{step}"
    if jax.process_index() == 0:
      source = epath.Path(self.directory) / str(step)
      if target.exists():
        target.rmtree()
      if source.exists():
        source.rename(target)
    multihost.barrier(f"set-aside-{step}")
    self._manager.reload()
    return str(target)

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def _check_saved_arrays(saved, abstract_state, step: int) -> None:
  """Shapes and dtypes on disk must be what the config builds: Orbax would cast a dtype
  silently, and its shape error does not say which run the checkpoint came from."""
  saved_leaves = dict((_path_name(p), m) for p, m in jax.tree_util.tree_leaves_with_path(saved))
  if not saved_leaves:
    raise OSError(f"checkpoint {step} has no readable array metadata")  # damaged, not foreign
  for path, want in jax.tree_util.tree_leaves_with_path(abstract_state):
    key = _path_name(path)
    got = saved_leaves.get(key)
    if got is None:
      raise JpeglmError(f"checkpoint {step} has no array {key}: it holds another model")
    if tuple(got.shape) != tuple(want.shape):
      raise JpeglmError(f"checkpoint {step}: {key} has shape {tuple(got.shape)}, the config "
                        f"builds {tuple(want.shape)}: the workdir holds another model shape")
    if np.dtype(got.dtype) != np.dtype(want.dtype):
      raise JpeglmError(f"checkpoint {step}: {key} is {got.dtype}, the config asks for "
                        f"{want.dtype}")


def _path_name(path) -> str:
  # Orbax metadata stores namedtuples and lists as dicts: compare paths by their names only.
  return "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k)))) for k in path)
