"""A checkpoint write that fails on one process must not leave the others waiting for it.

Orbax finishes an asynchronous save with two barriers across processes in a background
thread (`async_write_complete`, `async_commit_complete`). A process whose write fails (disk
full, no permission) never arrives, and the others would wait there for Orbax's timeout
(20 minutes), then again at exit. `SharedFailure.barrier` replaces those two barriers (as
Orbax's `AsyncOptions.barrier_sync_fn`) by a count in JAX's key-value store that also
watches for a failure published by any process: the others then fail within a poll.

The failing process publishes from Orbax's finalize thread, which reaches the next barrier
(`set_value_start`) with the write error in flight; its main thread and the others' learn
the same one-line message (`published()`).
"""

from __future__ import annotations

import collections
import sys
import threading
import time

import jax
import orbax.checkpoint as ocp

FAILED_KEY = "jpeglm/checkpoint_write_failed"
_COMMIT_BARRIERS = ("async_write_complete", "async_commit_complete")
_POLL_SECONDS = 0.05


class FailedElsewhere(RuntimeError):
  """The checkpoint write failed on another process (the message says where and why)."""


class SharedFailure:
  """Publishes and reads a failed checkpoint write across the processes of one run."""

  def __init__(self, describe_failure):
    """`describe_failure(exception)` gives the one-line message for this process's failure."""
    self._client = ocp.multihost.get_jax_distributed_client()
    self._default_barrier = ocp.multihost.get_barrier_sync_fn()
    self._describe = describe_failure
    self._uses: collections.Counter = collections.Counter()

  def publish(self, message: str) -> None:
    try:
      self._client.key_value_set(FAILED_KEY, message)
    except jax.errors.JaxRuntimeError:
      pass  # another process published first: its message is the cause

  def published(self) -> str | None:
    try:
      return self._client.key_value_try_get(FAILED_KEY)
    except jax.errors.JaxRuntimeError:
      return None

  def barrier(self, *, key: str, timeout_ms: int) -> None:
    """Orbax's barrier_sync_fn: every process calls it with the same keys in the same order."""
    if any(name in key for name in _COMMIT_BARRIERS):
      self._counted_barrier(key, timeout_ms)
      return
    error = sys.exc_info()[1]
    if error is not None and threading.current_thread() is not threading.main_thread():
      # Orbax's finalize thread, unwinding from a failed save: tell the others before this
      # barrier, which they reach only once their commit barrier has given up.
      if self.published() is None:
        self.publish(self._describe(error))
    self._default_barrier(key=key, timeout_ms=timeout_ms)

  def _counted_barrier(self, key: str, timeout_ms: int) -> None:
    self._uses[key] += 1
    count_key = f"jpeglm/barrier/{key}/{self._uses[key]}"
    self._client.key_value_increment(count_key, 1)
    deadline = time.monotonic() + timeout_ms / 1000
    while int(self._client.key_value_try_get(count_key)) < jax.process_count():
      failure = self.published()
      if failure is not None:
        raise FailedElsewhere(failure)
      if time.monotonic() > deadline:
        raise TimeoutError(f"checkpoint barrier {key}: not every process arrived in "
                           f"{timeout_ms / 1000:.0f} s")
      time.sleep(_POLL_SECONDS)
