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
import sys
import traceback
from collections.abc import Callable

import jax
from etils import epath
import numpy as np
import orbax.checkpoint as ocp

from jpeglm.training import checkpoint_sync
from jpeglm.runtime import files, multihost
from jpeglm.training import stop_codes as preemption
from jpeglm.errors import JpeglmError

log = logging.getLogger("jpeglm.checkpoints")


@dataclasses.dataclass
class Restored:
  step: int
  state: object
  data: dict | None
  meta: dict


def encode_file(path: str) -> str:
  return base64.b64encode(files.read_bytes(path)).decode("ascii")


def decode_file(text: str, path: str) -> None:
  files.write_bytes(path, base64.b64decode(text))


class Checkpointer:
  """Saves every call it is given (the caller decides the cadence); keeps the newest `keep`.

  A failed write is noted in `failure` (one line naming the step, the path and, with several
  processes, the process it failed on); every process of the run learns it, and no later
  save is started (see jpeglm.training.checkpoint_sync).
  """

  def __init__(self, directory: str, keep: int = 3, asynchronous: bool = True):
    self.directory = os.path.abspath(directory) if "://" not in directory else directory
    self._unconfirmed = None  # the step whose background write is not yet known to be done
    self._in_flight = None  # the step of the last save started
    self.failure: str | None = None
    self._shared = (checkpoint_sync.SharedFailure(self._failure_message)
                    if jax.process_count() > 1 else None)
    _quiet_orbax_tracebacks()
    try:
      # Handlers named up front: a fresh manager can then read any item's metadata alone.
      self._manager = ocp.CheckpointManager(
          self.directory,
          item_handlers={"state": ocp.StandardCheckpointHandler(),
                         "data": ocp.JsonCheckpointHandler(),
                         "meta": ocp.JsonCheckpointHandler()},
          options=ocp.CheckpointManagerOptions(
              max_to_keep=keep, enable_async_checkpointing=asynchronous, create=True,
              async_options=(ocp.AsyncOptions(barrier_sync_fn=self._shared.barrier)
                             if self._shared else None)))
    except Exception as e:  # noqa: BLE001 - not a directory, no permission, ...
      raise JpeglmError(f"cannot use checkpoint directory {self.directory}: "
                        f"{_first_line(e)}") from None

  def check_writable(self) -> None:
    """Fails now, not at the first save after hours of training, if the directory cannot
    take files (not a directory, no permission, read-only file system)."""
    probe = epath.Path(self.directory) / f".write-check-{jax.process_index()}"
    try:
      probe.write_text("ok")
      probe.unlink()
    except Exception as e:  # noqa: BLE001
      raise JpeglmError(f"cannot write checkpoints to {self.directory}: {_first_line(e)}") \
          from None

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, step: int, state, data: dict | None, meta: dict) -> bool:
    """Starts an (asynchronous) save once the previous one has finished; False (nothing
    started) once a write has failed, on this process or another: see `failure`.

    Orbax writes into a temporary directory and renames it when complete, so a failed or
    interrupted write is never listed as a step and never picked at restore.
    """
    if self.failure is not None:
      return False
    try:
      self.wait()
    except JpeglmError:
      return False  # every process's wait fails alike: none starts this save
    items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta)}
    if data is not None:
      items["data"] = ocp.args.JsonSave(data)
    self._in_flight = step
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # noqa: BLE001
      raise self._record_failure(e) from None
    self._unconfirmed = step
    return True

  def check(self) -> None:
    """Notes in `failure` a background write that has failed; never blocks, never raises."""
    if (self.failure is None and self._unconfirmed is not None
        and not self._manager.is_saving_in_progress()):
      try:
        self.wait()
      except JpeglmError:
        pass

  def stop_code(self) -> int:
    """The stop code (jpeglm.training.stop_codes) this process puts into its rows of the next batch."""
    return preemption.STOP_CHECKPOINT_FAILED if self.failure else preemption.STOP_NONE

  def failure_error(self, stopped_at: int) -> JpeglmError:
    """The one-line error once every process has stopped for a failed write."""
    if self.failure is None:  # learned from the batch before this process's own wait failed
      try:
        self.wait()
      except JpeglmError:
        pass
    if self.failure is None and self._shared is not None:
      self.failure = self._shared.published()
    kept = self._kept_steps()
    return JpeglmError(
        f"{self.failure or 'a checkpoint write failed on another process'}; every process "
        f"stopped at step {stopped_at}; "
        + (f"checkpoint {kept[-1]} is the latest: rerun the same command to resume from it"
           if kept else "no checkpoint is kept: a rerun starts again"))

  def _failure_message(self, e: BaseException) -> str:
    if isinstance(e, checkpoint_sync.FailedElsewhere):
      return str(e)
    where = f" on process {jax.process_index()}" if jax.process_count() > 1 else ""
    step = self._in_flight
    return (f"could not write checkpoint step {step} to {self.directory}/{step}{where}: "
            f"{_first_line(e)}")

  def _record_failure(self, e: BaseException) -> JpeglmError:
    """Notes a failed write (the first process's message wins) and tells the others."""
    if self.failure is None:
      own = self._failure_message(e)
      if self._shared is not None:
        self._shared.publish(own)
        own = self._shared.published() or own
      self.failure = own
    return JpeglmError(self.failure)

  def _kept_steps(self) -> list[int]:
    try:
      return sorted(int(p.name) for p in epath.Path(self.directory).iterdir()
                    if p.name.isdigit())
    except OSError:
      return []

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
      saved = reader.item_metadata(step)["state"]
      _check_saved_arrays(saved["params"] if saved is not None else {}, abstract_params, step)
      restored = reader.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(item=item, restore_args=restore_args,
                                       partial_restore=True),
          meta=ocp.args.JsonRestore()))
    except JpeglmError:
      raise
    except Exception as e:  # noqa: BLE001 - any failure to read means "damaged"
      raise self.damaged_error(step, e) from None
    finally:
      reader.close()
    return Restored(step, restored["state"]["params"], None, restored["meta"])

  def damaged_error(self, step: int, e: BaseException) -> JpeglmError:
    others = [s for s in self.steps() if s != step]
    return JpeglmError(f"checkpoint {step} in {self.directory} is damaged ({_first_line(e)})"
                       + (f"; pick another with --step (have {others})" if others else ""))

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
    """Blocks until the last save is written; raises JpeglmError if it failed."""
    if self.failure is not None:
      raise JpeglmError(self.failure)
    self._unconfirmed = None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      raise self._record_failure(e) from None

  def close(self) -> None:
    """Waits for the last write; raises a failure not noted before."""
    known = self.failure is not None
    try:
      if not known:
        self.wait()
    finally:
      try:
        self._manager.close()
      except Exception:  # noqa: BLE001 - Orbax raises a failed write again on close
        if not known and self.failure is None:
          raise


def _first_line(e: BaseException) -> str:
  lines = [line.strip() for line in str(e).splitlines() if line.strip()]
  return lines[0] if lines else type(e).__name__


class _NoTraceback(logging.Filter):
  """Drops the traceback of records about Orbax (logged by Orbax, or by asyncio for an
  Orbax write task whose error nobody retrieved); the message stays."""

  def filter(self, record: logging.LogRecord) -> bool:
    tb = record.exc_info[2] if record.exc_info else None
    frames = [] if tb is None else traceback.extract_tb(tb)
    if "orbax" in record.pathname or any("orbax" in f.filename for f in frames):
      record.exc_info, record.exc_text = None, None
    return True


def _quiet_orbax_tracebacks() -> None:
  """Orbax logs a failed background write with its traceback from several threads, and
  TensorStore's writes still in flight then report "Event loop is closed" as unraisable
  exceptions, dozens of tracebacks. The caller reports the failure as one line: keep only
  Orbax's one-line messages and drop those late reports (nothing more is lost by then)."""
  for name in ("absl", "asyncio"):
    logger = logging.getLogger(name)
    if not any(isinstance(f, _NoTraceback) for f in logger.filters):
      logger.addFilter(_NoTraceback())
  if not getattr(sys.unraisablehook, "_jpeglm", False):
    previous = sys.unraisablehook

    def hook(unraisable):
      if not (isinstance(unraisable.exc_value, RuntimeError)
              and str(unraisable.exc_value) == "Event loop is closed"):
        previous(unraisable)

    hook._jpeglm = True
    sys.unraisablehook = hook


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
