"""SIGTERM (how TPU and cloud VMs announce preemption) becomes a flag the training loop
polls, so it can save a checkpoint and exit cleanly instead of dying mid-step."""

from __future__ import annotations

import signal
import threading


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
