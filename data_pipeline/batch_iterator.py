"""The iterator the trainer holds: numpy batches, a JSON state for checkpoints, skip counts."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from data_pipeline import bad_inputs
from jpeglm.errors import JpeglmError


class BatchIterator:
  """Wraps a Grain iterator of batch dicts.

  `get_state()` is plain JSON (save it with Orbax `JsonSave`); `set_state()` continues with
  exactly the batches an uninterrupted run would have produced next. With `num_batches` the
  iterator stops after that many batches (evaluation).
  """

  def __init__(self, grain_iterator, num_workers: int, num_batches: int | None = None):
    self._it = grain_iterator
    self._num_workers = num_workers
    self._num_batches = num_batches
    self._taken = 0

  def __iter__(self) -> "BatchIterator":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    if self._num_batches is not None and self._taken >= self._num_batches:
      raise StopIteration
    batch = next(self._it)
    self._taken += 1
    # Worker batches live in shared memory that Grain reuses: copy them out.
    return {k: np.array(v, copy=True) for k, v in batch.items()}

  def get_state(self) -> dict[str, Any]:
    state = {"grain": self._it.get_state(), "num_workers": self._num_workers,
             "batches_taken": self._taken}
    return json.loads(json.dumps(state))  # fails here, not inside a checkpoint, if not JSON

  def set_state(self, state: dict[str, Any]) -> None:
    saved_workers = state.get("num_workers")
    if saved_workers != self._num_workers:
      raise JpeglmError(f"the data iterator was checkpointed with data.num_workers="
                        f"{saved_workers}; resume with that value (now {self._num_workers})")
    self._it.set_state(state["grain"])
    self._taken = int(state.get("batches_taken", 0))

  def bad_inputs(self) -> tuple[int, int]:
    """(inputs seen, inputs skipped as unreadable) so far, over all worker processes."""
    return bad_inputs.count_bad_inputs(self._it.get_state())

  def close(self) -> None:
    close = getattr(self._it, "close", None)
    if close is not None:
      close()

  def __enter__(self) -> "BatchIterator":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
