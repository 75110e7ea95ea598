"""Goodput: where a run's wall time went, per attempt and summed over the restarts of a workdir.

The trainer's wall time (from `train_and_evaluate`'s start) is cut into consecutive pieces,
each charged to one category, so the categories add up to at most the wall time:

  startup_and_compile  setup, restore or init, and everything up to the first step's dispatch
                       (which traces and compiles it);
  training_steps       the steps: dispatch, waiting on the device, logging;
  data_wait            waiting for the next batch;
  checkpoint_blocking  the part of saves that blocks training (and the final wait for writes);
  evaluation           held-out evaluation;
  lost_to_restarts     redoing steps that an earlier attempt had dispatched after its last
                       checkpoint (it was killed or stopped before saving them).

Each attempt (one `jpeglm train` process group) keeps its record in WORKDIR/goodput.json,
rewritten after every dispatched step, so that a run killed with SIGKILL still leaves its
last dispatched step behind; the next attempt counts the steps it must redo from it. Only
process 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time

from jpeglm.runtime import files

REMOTE_WRITE_SECONDS = 30.0

FILE = "goodput.json"
CATEGORIES = ("startup_and_compile", "training_steps", "data_wait", "checkpoint_blocking",
              "evaluation", "lost_to_restarts")
_SHORT = {"startup_and_compile": "startup+compile", "training_steps": "steps",
          "data_wait": "data wait", "checkpoint_blocking": "checkpoints",
          "evaluation": "eval", "lost_to_restarts": "lost to restarts"}

log = logging.getLogger("jpeglm.training.goodput")


def read_attempts(workdir: str) -> list[dict]:
  """The attempts recorded in WORKDIR/goodput.json (none if missing or unreadable)."""
  path = files.join(workdir, FILE)
  if not files.exists(path):
    return []
  try:
    return list(json.loads(files.read_bytes(path))["attempts"])
  except (OSError, ValueError, KeyError, TypeError) as e:
    log.warning("%s is unreadable (%s): goodput starts a new record", path, e)
    return []


class Goodput:
  """Charges the wall time since the last charge to a category; see the module docstring."""

  def __init__(self, workdir: str, started: float, start_step: int, end_step: int,
               enabled: bool = True):
    self.path = files.join(workdir, FILE)
    self.enabled = enabled
    self.started = self._mark = started
    self._written = started
    self.previous = read_attempts(workdir) if enabled else []
    # Steps up to here were dispatched by an earlier attempt, after the checkpoint resumed.
    last = max((a.get("last_step") or 0 for a in self.previous), default=0)
    self.redo_until = max(min(last, end_step), start_step)
    self.record = {"attempt": len(self.previous) + 1, "start_step": start_step,
                   "last_step": None, "lost_steps": self.redo_until - start_step,
                   "wall_seconds": 0.0, "seconds": dict.fromkeys(CATEGORIES, 0.0),
                   "finished": False}
    self._phase = "startup_and_compile"

  def charge(self, category: str) -> None:
    now = time.perf_counter()
    self.record["seconds"][category] += now - self._mark
    self._mark = now

  @contextlib.contextmanager
  def timed(self, category: str):
    """Charges the time so far to the current phase, then the block's time to `category`."""
    self.charge(self._phase)
    try:
      yield
    finally:
      self.charge(category)

  def dispatched(self, step: int) -> None:
    """Step `step` is queued (and the step before it read back): the time since the last
    charge goes to the phase so far; the time until the next one to this step's phase."""
    self.charge(self._phase)
    self._phase = "lost_to_restarts" if step <= self.redo_until else "training_steps"
    self.record["last_step"] = step
    # A remote workdir gets an object write at most every REMOTE_WRITE_SECONDS: a record at
    # most that old survives a kill there (every step's, on a local disk).
    if not files.is_url(self.path) or time.perf_counter() - self._written > REMOTE_WRITE_SECONDS:
      self._write()

  def finish(self) -> dict:
    """Closes this attempt's record; returns its figures and the workdir's totals."""
    self.charge(self._phase)
    self.record["finished"] = True
    self._write()
    attempts = [*self.previous, self.record]
    out = {"wall_seconds": self.record["wall_seconds"], "lost_steps": self.record["lost_steps"]}
    out.update({f"{c}_seconds": self.record["seconds"][c] for c in CATEGORIES})
    out["fraction"] = _fraction(self.record)
    total = {"wall_seconds": sum(a["wall_seconds"] for a in attempts),
             "seconds": {c: sum(a["seconds"].get(c, 0.0) for a in attempts) for c in CATEGORIES}}
    out.update(attempts=len(attempts), total_wall_seconds=total["wall_seconds"],
               total_lost_steps=sum(a.get("lost_steps", 0) for a in attempts),
               total_fraction=_fraction(total))
    out.update({f"total_{c}_seconds": total["seconds"][c] for c in CATEGORIES})
    return out

  def _write(self) -> None:
    self.record["wall_seconds"] = time.perf_counter() - self.started
    if not self.enabled:
      return
    self._written = time.perf_counter()
    # Written whole: a kill leaves the old record or the new one.
    files.write_bytes(self.path, json.dumps({"attempts": [*self.previous, self.record]}).encode())


def _fraction(record: dict) -> float:
  return record["seconds"]["training_steps"] / record["wall_seconds"] if record["wall_seconds"] else 0.0


def line(summary: dict) -> str:
  """`goodput 61.0% of 14.2 s: startup+compile 4.1 s, steps 8.7 s, ...; workdir ...`."""
  parts = ", ".join(f"{_SHORT[c]} {summary[f'{c}_seconds']:.1f} s" for c in CATEGORIES)
  return (f"goodput {100 * summary['fraction']:.1f}% of {summary['wall_seconds']:.1f} s: {parts} "
          f"({summary['lost_steps']} steps redone); workdir total over {summary['attempts']} "
          f"attempt(s): {100 * summary['total_fraction']:.1f}% of "
          f"{summary['total_wall_seconds']:.1f} s, {summary['total_lost_steps']} steps redone")
