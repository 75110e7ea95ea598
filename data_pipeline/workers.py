"""Grain worker processes: one helper so every caller sets them up the same way."""

from __future__ import annotations

import contextlib

import grain
from absl import flags


def _ensure_absl_flags_parsed() -> None:
  # Grain's worker code reads absl flags; outside `absl.app.run` (our CLI, pytest) nobody has
  # parsed them, and reading one would raise. Their defaults are what we want.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def with_workers(dataset: grain.IterDataset, num_workers: int,
                 buffer_per_worker: int = 2) -> grain.IterDataset:
  """`dataset` computed in `num_workers` processes (0: in this process), in a fixed order."""
  if num_workers <= 0:
    return dataset
  _ensure_absl_flags_parsed()
  return dataset.mp_prefetch(grain.MultiprocessingOptions(
      num_workers=num_workers, per_worker_buffer_size=buffer_per_worker))


@contextlib.contextmanager
def iterate(dataset: grain.IterDataset):
  """An iterator over `dataset` whose worker processes and shared memory are released after."""
  iterator = iter(dataset)
  try:
    yield iterator
  finally:
    close = getattr(iterator, "close", None)
    if close is not None:
      close()
