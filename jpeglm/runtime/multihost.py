"""Small agreements between JAX processes: merging JSON states, waiting. (Stopping is
agreed through the train step's metrics: see jpeglm.training.stop_codes.)"""

from __future__ import annotations

import json

import jax
import numpy as np
from jax.experimental import multihost_utils


def merge_json(obj: dict) -> list[dict]:
  """Every process's JSON-able dict, on every process (in process order)."""
  if jax.process_count() == 1:
    return [obj]
  data = np.frombuffer(json.dumps(obj).encode(), dtype=np.uint8)
  lengths = multihost_utils.process_allgather(np.array([data.size], np.int32))
  padded = np.zeros(int(lengths.max()), np.uint8)
  padded[:data.size] = data
  gathered = multihost_utils.process_allgather(padded)
  return [json.loads(bytes(row[:int(n)]).decode()) for row, n in zip(gathered, lengths.ravel())]


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(name)
