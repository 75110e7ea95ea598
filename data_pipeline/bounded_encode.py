"""`data.max_seconds_per_file`: decode + encode one file in a helper process, with a deadline.

A Python thread cannot be stopped, and a decoder busy in C (a huge progressive JPEG, a
pathological video) does not look at signals. So each data worker hands its files to helper
processes of its own (one per thread encoding at once); when a file is not done within the deadline the helper is killed
(SIGKILL, by its pid), the file becomes a skipped input naming it, and a fresh helper takes
the next file. The worker itself never waits longer than the deadline (plus the helper's
start-up the first time). The helper's start-up is not counted against a file.

Protocol over the helper's stdin/stdout: length-prefixed pickles. First the encoder (its
settings), answered by "ready"; then (item, name, stream_index) requests, each answered by
("ok", codec bytes) or ("error", reason).
"""

from __future__ import annotations

import atexit
import hashlib
import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
from typing import Any

from jpeglm.errors import JpeglmError

STARTUP_SECONDS = 120.0  # importing numpy/PIL/PyAV in a fresh process on a busy machine
_HEADER = struct.Struct("<Q")
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class FileTimeout(Exception):
  pass


class HelperUnavailable(JpeglmError):
  """The helper process could not be started: a fault of the machine, not of a file, so it
  stops the data pipeline instead of being counted as a skipped file."""


def _write(stream, obj: Any) -> None:
  data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
  stream.write(_HEADER.pack(len(data)) + data)
  stream.flush()


def _read_exact(fd: int, size: int, deadline: float) -> bytes:
  chunks, left = [], size
  while left:
    remaining = deadline - time.monotonic()
    if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
      raise FileTimeout()
    chunk = os.read(fd, min(left, 1 << 20))
    if not chunk:
      raise EOFError("the helper process ended")
    chunks.append(chunk)
    left -= len(chunk)
  return b"".join(chunks)


def _read(fd: int, deadline: float) -> Any:
  (size,) = _HEADER.unpack(_read_exact(fd, _HEADER.size, deadline))
  return pickle.loads(_read_exact(fd, size, deadline))


class _Helper:
  """One helper process for one encoder's settings; restarted after a kill. Used by one
  thread at a time (see _Pool)."""

  def __init__(self, encoder_pickle: bytes):
    self._encoder_pickle = encoder_pickle
    self._proc: subprocess.Popen | None = None

  def _start(self) -> subprocess.Popen:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [_ROOT, env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen([sys.executable, "-m", "data_pipeline.bounded_encode"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, cwd=_ROOT)
    proc.stdin.write(_HEADER.pack(len(self._encoder_pickle)) + self._encoder_pickle)
    proc.stdin.flush()
    try:
      if _read(proc.stdout.fileno(), time.monotonic() + STARTUP_SECONDS) == "ready":
        return proc
      reason = "it answered something else than ready"
    except FileTimeout:
      reason = f"not ready within {STARTUP_SECONDS:g} s"
    except (OSError, EOFError, pickle.UnpicklingError) as e:
      reason = f"{type(e).__name__}: {e} (exit code {proc.poll()})"
    proc.kill()
    proc.wait()
    raise HelperUnavailable(f"the data.max_seconds_per_file helper process did not start: "
                            f"{reason}")

  def stop(self) -> None:
    if self._proc is not None:
      self._proc.kill()
      self._proc.wait()
      for stream in (self._proc.stdin, self._proc.stdout):
        stream.close()
      self._proc = None

  def run(self, request: tuple, seconds: float) -> tuple[str, Any]:
    if self._proc is None or self._proc.poll() is not None:
      self.stop()
      self._proc = self._start()
    try:
      _write(self._proc.stdin, request)
      return _read(self._proc.stdout.fileno(), time.monotonic() + seconds)
    except FileTimeout:
      self.stop()
      return "timeout", None
    except (OSError, EOFError, pickle.UnpicklingError) as e:
      code = self._proc.poll() if self._proc is not None else None
      self.stop()
      return "error", f"the file helper failed ({e or type(e).__name__}; exit code {code})"


class _Pool:
  """Helpers for one encoder's settings, one per thread encoding at the same time (Grain
  reads a random-access source with several threads), at most one per core."""

  def __init__(self, encoder_pickle: bytes):
    self._encoder_pickle = encoder_pickle
    self._idle: list[_Helper] = []
    self._all: list[_Helper] = []
    self._free = threading.Semaphore(max(1, os.cpu_count() or 1))
    self._lock = threading.Lock()

  def run(self, request: tuple, seconds: float) -> tuple[str, Any]:
    with self._free:
      with self._lock:
        if not self._idle:
          helper = _Helper(self._encoder_pickle)
          self._all.append(helper)
        else:
          helper = self._idle.pop()
      try:
        return helper.run(request, seconds)
      finally:
        with self._lock:
          self._idle.append(helper)

  def stop(self) -> None:
    for helper in self._all:
      helper.stop()


_POOLS: dict[str, _Pool] = {}
_POOLS_LOCK = threading.Lock()


def helper_for(encoder_pickle: bytes) -> _Pool:
  """This process's helpers for these encoder settings (shared by its iterators)."""
  key = hashlib.sha256(encoder_pickle).hexdigest()
  with _POOLS_LOCK:
    if key not in _POOLS:
      _POOLS[key] = _Pool(encoder_pickle)
    return _POOLS[key]


@atexit.register
def _stop_helpers() -> None:
  for pool in list(_POOLS.values()):
    pool.stop()


def _serve() -> None:
  """The helper's loop: encode what the parent sends until its stdin closes."""
  stdin = sys.stdin.buffer
  stdout = os.fdopen(os.dup(1), "wb")  # the protocol's own copy of stdout
  os.dup2(2, 1)  # anything a library prints goes to stderr, never into the protocol
  header = stdin.read(_HEADER.size)
  encoder = pickle.loads(stdin.read(_HEADER.unpack(header)[0]))
  _write(stdout, "ready")
  while header := stdin.read(_HEADER.size):
    item, name, stream_index = pickle.loads(stdin.read(_HEADER.unpack(header)[0]))
    try:
      _write(stdout, ("ok", encoder.codec_bytes_at(item, name, stream_index)))
    except Exception as e:  # noqa: BLE001 - reported to the parent as this file's error
      _write(stdout, ("error", str(e).splitlines()[0] if str(e) else type(e).__name__))


if __name__ == "__main__":
  _serve()
