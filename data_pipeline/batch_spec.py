"""The train batch, written once: the data pipeline fills it, the train step reads it, and
the compile checks lay it out from it.

Every array is batch-major: per-token arrays are [rows, seq_len], per-row arrays [rows].
"stop" (int32 per row, see jpeglm.training.stop_codes) is not data: the trainer adds it to each batch.
"""

from __future__ import annotations

import numpy as np

PER_TOKEN = {"inputs": np.int32, "targets": np.int32, "segment_ids": np.int32,
             "positions": np.int32, "weights": np.float32}
PER_ROW = {"target_tokens": np.int32, "target_bytes": np.int32}
DATA = {**PER_TOKEN, **PER_ROW}  # what the data pipeline yields
STEP = {**DATA, "stop": np.int32}  # what the train step takes


def shapes(rows: int, seq_len: int, names=STEP) -> dict[str, tuple[tuple[int, ...], type]]:
  """name -> (shape, dtype) of a batch of `rows` rows."""
  return {k: ((rows, seq_len) if k in PER_TOKEN else (rows,), dtype) for k, dtype in names.items()}


def zeros(rows: int, seq_len: int, names=DATA) -> dict[str, np.ndarray]:
  """A batch of `rows` all-zero rows (zero weights: it trains nothing)."""
  return {k: np.zeros(shape, dtype) for k, (shape, dtype) in shapes(rows, seq_len, names).items()}


def conform(batch: dict) -> dict[str, np.ndarray]:
  """The pipeline's arrays in the spec's dtypes (and only the spec's arrays)."""
  return {k: np.asarray(batch[k]).astype(dtype, copy=False) for k, dtype in DATA.items()}
