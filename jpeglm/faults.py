"""Test-only fault injection: a real signal sent at a chosen training step.

JPEGLM_FAULT="sigkill@4" kills the process with SIGKILL right after step 4 is dispatched;
"sigterm@5:1" sends SIGTERM to process 1 only after step 5. Several faults are separated by
commas. Tests use it so a kill lands at a known step instead of racing the run from outside;
unset (every real run), `at_step` does nothing.
"""

from __future__ import annotations

import os
import signal

ENV = "JPEGLM_FAULT"
_SIGNALS = {"sigkill": signal.SIGKILL, "sigterm": signal.SIGTERM, "sigint": signal.SIGINT}


def parse(text: str) -> list[tuple[int, int, int | None]]:
  """[(signal, step, process or None)] from "sigkill@4,sigterm@5:1"."""
  faults = []
  for item in filter(None, (part.strip() for part in text.split(","))):
    try:
      name, where = item.split("@")
      step, _, process = where.partition(":")
      faults.append((_SIGNALS[name.lower()], int(step), int(process) if process else None))
    except (KeyError, ValueError):
      raise ValueError(f"{ENV}={text!r}: expected e.g. 'sigkill@4' or 'sigterm@5:1'") from None
  return faults


class Faults:
  def __init__(self, process_index: int, text: str | None = None):
    text = os.environ.get(ENV, "") if text is None else text
    self._faults = [(sig, step) for sig, step, process in parse(text)
                    if process is None or process == process_index]

  def at_step(self, step: int) -> None:
    for sig, when in self._faults:
      if when == step:
        os.kill(os.getpid(), sig)
