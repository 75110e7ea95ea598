"""Grain worker processes: one helper so every caller sets them up the same way."""

from __future__ import annotations

import contextlib
import os
import threading
import time

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
      num_workers=num_workers, per_worker_buffer_size=buffer_per_worker),
      worker_init_fn=exit_with_parent)


PARENT_POLL_SECONDS = 0.5


def exit_with_parent(worker_index: int, worker_count: int) -> None:
  """Grain worker start-up: the worker ends when the process that started it dies.

  A trainer killed with SIGKILL (the OOM killer, `kill -9`) cannot stop its workers, and
  Grain's would live on, holding the run's stdout open and its CPUs busy, until someone kills
  them. When the parent dies, the worker is re-parented: a getppid() that changes says so."""
  del worker_index, worker_count
  parent = os.getppid()

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(PARENT_POLL_SECONDS)
    os._exit(1)  # no clean-up to run: the parent that would read the results is gone

  threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


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
