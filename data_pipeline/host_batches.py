"""This host's rows of the global batch, read as fixed data shards.

The global batch is defined by `data.num_shards` data shards (default: one per process),
each giving global_batch / num_shards rows. A host reads the shards it owns and stacks
their rows. So the global batch, and the loss curve, do not depend on how many processes
read it: 1 process x 8 devices and 2 processes x 4 devices train on the same data, and a
run can resume on a different number of hosts with the same data order.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from data_pipeline.batch_iterator import BatchIterator
from jpeglm.errors import ConfigError


def owned_shards(num_shards: int, process_index: int, process_count: int) -> range:
  if num_shards % process_count:
    raise ConfigError(f"data.num_shards={num_shards} must be a multiple of the "
                      f"{process_count} processes")
  per_process = num_shards // process_count
  return range(process_index * per_process, (process_index + 1) * per_process)


class HostBatches:
  """Stacks the batches of this host's shard iterators row-wise.

  Its state maps shard index -> that shard's iterator state; the trainer merges the states of
  all hosts into one, so any host layout can pick its own shards back out of a checkpoint.
  """

  def __init__(self, iterators: list[BatchIterator], shard_ids: range):
    self._iterators = iterators
    self._shard_ids = list(shard_ids)

  def __iter__(self) -> "HostBatches":
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    parts = [next(it) for it in self._iterators]
    if len(parts) == 1:
      return parts[0]
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

  def get_state(self) -> dict[str, Any]:
    return {"shards": {str(i): it.get_state() for i, it in zip(self._shard_ids, self._iterators)}}

  def set_state(self, state: dict[str, Any]) -> None:
    shards = state["shards"]
    missing = [i for i in self._shard_ids if str(i) not in shards]
    if missing:
      raise ConfigError(f"the checkpointed data state has no shard {missing[0]} (it holds "
                        f"{len(shards)}): keep data.num_shards of the checkpointed run")
    for i, it in zip(self._shard_ids, self._iterators):
      it.set_state(shards[str(i)])

  def bad_inputs(self) -> tuple[int, int]:
    seen = skipped = 0
    for it in self._iterators:
      a, b = it.bad_inputs()
      seen, skipped = seen + a, skipped + b
    return seen, skipped

  def close(self) -> None:
    for it in self._iterators:
      it.close()
