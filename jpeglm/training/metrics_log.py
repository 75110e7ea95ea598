"""Where a run's numbers go: metrics.jsonl (one object per logged step), TensorBoard event
files, and the console. Only the main process writes; the others keep quiet. A `gs://`
workdir gets both through a local mirror copied up every SYNC_SECONDS and at the end
(jpeglm.runtime.files)."""

from __future__ import annotations

import json
import math

import numpy as np

from jpeglm.runtime import files

SYNC_SECONDS = 30.0


class MetricsLog:
  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    self._mirror = None
    if enabled:
      files.makedirs(workdir)
      self._mirror = files.Mirror(workdir, SYNC_SECONDS)
      if self._mirror.remote and files.exists(files.join(workdir, "metrics.jsonl")):
        with open(self._mirror.path("metrics.jsonl"), "wb") as f:  # a resumed run appends
          f.write(files.read_bytes(files.join(workdir, "metrics.jsonl")))
      self._jsonl = open(self._mirror.path("metrics.jsonl"), "a", buffering=1)
      from tensorboardX import SummaryWriter  # imported here: only the main process needs it
      self._tb = SummaryWriter(self._mirror.path("tensorboard"), flush_secs=30)

  def write(self, step: int, metrics: dict, prefix: str = "") -> None:
    """One JSON line {"step": step, **metrics} and the same scalars in TensorBoard."""
    if not self.enabled:
      return
    clean = {f"{prefix}{k}": _plain(v) for k, v in metrics.items()}
    self._jsonl.write(json.dumps({"step": int(step), **clean}) + "\n")
    for key, value in clean.items():
      if isinstance(value, (int, float)) and math.isfinite(value):
        self._tb.add_scalar(key, value, int(step))
    if self._mirror.due():  # a gs:// workdir: copied up every SYNC_SECONDS, not every line
      self._tb.flush()
      self._mirror.sync()

  def image(self, step: int, tag: str, image: np.ndarray) -> None:
    """An HxWx3 uint8 image (e.g. a grid of samples) in TensorBoard."""
    if self.enabled:
      self._tb.add_image(tag, image, int(step), dataformats="HWC")

  def close(self) -> None:
    if self.enabled:
      self._jsonl.close()
      self._tb.close()
      self._mirror.close()


def _plain(value):
  if isinstance(value, (np.generic, np.ndarray)):
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)  # JSON has no NaN; keep it visible rather than dropping the line
  return value


def read_metrics(workdir: str) -> list[dict]:
  """All lines of WORKDIR/metrics.jsonl."""
  path = files.join(workdir, "metrics.jsonl")
  if not files.exists(path):
    return []
  return [json.loads(line) for line in files.read_bytes(path).decode().splitlines()
          if line.strip()]
