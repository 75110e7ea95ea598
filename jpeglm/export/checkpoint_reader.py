"""Reads a run's checkpoint one parameter leaf at a time, as host numpy arrays.

Orbax's partial restore reads only the arrays named in the target tree, so asking for one
leaf at a time keeps at most one leaf (for 7B float32: the stacked MLP matrices, 5.8 GB of
27 GB) in memory, with no optimizer state and no device copies.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from jpeglm.training import run_setup
from jpeglm.training.checkpointing import Checkpointer
from jpeglm.errors import JpeglmError
from jpeglm.export.hf_layout import ENTRIES, Entry, leaf_shape
from jpeglm.model.transformer import ModelConfig


@dataclasses.dataclass
class CheckpointReader:
  state_dir: str  # WORKDIR/checkpoints/<step>/state
  step: int
  meta: dict  # {"config", "tokenizer" (base64), "step"}

  @classmethod
  def open(cls, workdir: str, step: int | None = None) -> "CheckpointReader":
    checkpointer = Checkpointer(os.path.join(workdir, run_setup.CHECKPOINT_DIR))
    try:
      steps = checkpointer.steps()
      if not steps:
        raise JpeglmError(f"no checkpoint in {workdir}: train first")
      step = steps[-1] if step is None else step
      if step not in steps:
        raise JpeglmError(f"no checkpoint for step {step} in {workdir} (have {steps})")
      try:
        meta = checkpointer.read_meta(step)
      except Exception as e:  # noqa: BLE001 - any failure to read means "damaged"
        raise checkpointer.damaged_error(step, e) from None
    finally:
      checkpointer.close()
    return cls(os.path.join(checkpointer.directory, str(step), "state"), step, meta)

  def check(self, cfg: ModelConfig) -> None:
    """Every leaf the config builds is on disk with its shape (before any writing)."""
    try:
      saved = ocp.PyTreeCheckpointHandler().metadata(epath.Path(self.state_dir)).tree["params"]
    except Exception as e:  # noqa: BLE001 - any failure to read means "damaged"
      raise JpeglmError(f"checkpoint {self.step} in {os.path.dirname(os.path.dirname(self.state_dir))} is "
                        f"damaged ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                        "pick another with --step") from None
    for entry in ENTRIES:
      node = saved
      for key in entry.path:
        node = node.get(key) if isinstance(node, dict) else None
      if node is None:
        raise JpeglmError(f"checkpoint {self.step} has no params/{'/'.join(entry.path)}")
      if tuple(node.shape) != leaf_shape(entry, cfg):
        raise JpeglmError(f"checkpoint {self.step}: params/{'/'.join(entry.path)} has shape "
                          f"{tuple(node.shape)}, the config builds {leaf_shape(entry, cfg)}")

  def read(self, entry: Entry) -> np.ndarray:
    """One whole leaf (all layers when stacked), in its saved dtype."""
    def nest(value):
      for key in reversed(("params", *entry.path)):
        value = {key: value}
      return value

    restored = ocp.PyTreeCheckpointHandler().restore(
        epath.Path(self.state_dir), args=ocp.args.PyTreeRestore(
            item=nest(0), restore_args=nest(ocp.RestoreArgs(restore_type=np.ndarray)),
            partial_restore=True))
    node = restored["params"]
    for key in entry.path:
      node = node[key]
    return node

  def read_params(self) -> dict:
    """The whole params tree (for verification: one full copy)."""
    params: dict = {}
    for entry in ENTRIES:
      node = params
      for key in entry.path[:-1]:
        node = node.setdefault(key, {})
      node[entry.path[-1]] = self.read(entry)
    return params
