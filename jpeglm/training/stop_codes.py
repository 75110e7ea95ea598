"""Why a run stops early, and how every process comes to stop at the same step.

SIGTERM (how TPU and cloud VMs announce preemption) becomes a flag the training loop polls.
Each process writes its own stop code into its rows of the next batch (`"stop"`, one int32
per row); the train step returns their maximum as a metric. The host reads step N's metrics
after dispatching step N+1 anyway, so every process learns at the same step that some
process wants to stop, without a blocking round trip, and all save the same step.
"""

from __future__ import annotations

import signal
import threading

# Ordered by precedence: the step's metric is the largest code of any process.
STOP_NONE = 0
STOP_TIME_BUDGET = 1
STOP_PREEMPTED = 2
STOP_DATA_FAILED = 3  # this process had no batch: the step must not change the state
STOP_NONFINITE = 4  # not in batches: the host reads it from the step's "finite" metric
STOP_CHECKPOINT_FAILED = 5  # a checkpoint write failed on some process: stop, save nothing


class PreemptionFlag:
  def __init__(self, signals=(signal.SIGTERM,)):
    self._event = threading.Event()
    self._previous = {}
    if threading.current_thread() is threading.main_thread():
      for sig in signals:
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame) -> None:
    self._event.set()

  @property
  def requested(self) -> bool:
    return self._event.is_set()

  def restore(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
