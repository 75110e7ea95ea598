"""Test-only fault injection at a chosen training step, so tests need not race the run.

JPEGLM_FAULT holds comma-separated KIND@STEP[:PROCESS] items (PROCESS: only that process):
  sigkill@4     the process kills itself with a real SIGKILL right after dispatching step 4;
  sigterm@5:1   process 1 sends itself SIGTERM (a preemption notice) after step 5;
  killworkers@3 SIGKILL to every data-loader worker process after step 3;
  nan@5         step 5's batch gets NaN loss weights, so its loss is not finite;
  diskfull@4    from step 4 on no file may grow past 64 KiB (RLIMIT_FSIZE): writes fail with
                EFBIG as on a full disk, even for root, while small logs still get written.
`jpeglm train` installs them as the trainer's step hooks only when JPEGLM_FAULT is set; the
training loop itself knows nothing of them.
"""

from __future__ import annotations

import multiprocessing
import os
import resource
import signal
from collections.abc import Callable

import numpy as np

ENV = "JPEGLM_FAULT"
_SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}
KINDS = (*_SIGNALS, "killworkers", "nan", "diskfull")
DISKFULL_BYTES = 64 * 1024


def parse(text: str) -> list[tuple[str, int, int | None]]:
  """[(kind, step, process or None)] from "sigkill@4,sigterm@5:1"."""
  faults = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    try:
      kind, where = item.split("@")
      step, _, process = where.partition(":")
      if kind.lower() not in KINDS:
        raise ValueError(kind)
      faults.append((kind.lower(), int(step), int(process) if process else None))
    except ValueError:
      raise ValueError(f"{ENV}={text!r}: expected KIND@STEP[:PROCESS] items, KIND one of "
                       f"{', '.join(KINDS)}") from None
  return faults


def from_env(process_index: int) -> "Faults | None":
  """The faults JPEGLM_FAULT asks of this process, or None (every real run)."""
  return Faults(process_index) if os.environ.get(ENV) else None


class Faults:
  def __init__(self, process_index: int, text: str | None = None):
    text = os.environ.get(ENV, "") if text is None else text
    self._faults = [(kind, step) for kind, step, process in parse(text)
                    if process is None or process == process_index]

  def at_step(self, step: int, finish_writes: Callable[[], None] = lambda: None) -> None:
    """Called once a step has been dispatched; `finish_writes` waits for checkpoint writes
    in flight, so that a full disk hits only the writes started after `step`."""
    for kind, when in self._faults:
      if when != step:
        continue
      if kind in _SIGNALS:
        os.kill(os.getpid(), _SIGNALS[kind])
      elif kind == "killworkers":
        for child in multiprocessing.active_children():
          os.kill(child.pid, signal.SIGKILL)
      elif kind == "diskfull":
        finish_writes()
        # Python ignores SIGXFSZ, so an oversized write fails with EFBIG instead of killing.
        resource.setrlimit(resource.RLIMIT_FSIZE,
                           (DISKFULL_BYTES, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

  def batch(self, step: int, rows: dict) -> dict:
    """This host's rows for `step`, poisoned if asked."""
    if ("nan", step) in self._faults:
      rows = {**rows, "weights": np.full_like(rows["weights"], np.nan)}
    return rows
