"""A run's small files (config.json, tokenizer.model, metrics.jsonl, goodput.json, TensorBoard,
sample grids) on a local disk or at any fsspec URL, such as the `gs://` workdir of a TPU pod.

Orbax writes the checkpoints itself; everything else in a workdir goes through here, so that
a `gs://` workdir holds the whole run and not only its checkpoints (plain `open` would write
to a local folder named `gs:`, lost with the VM, and unseen by the other hosts). Object
stores have no append and no rename: an appended log is kept in a local staging file and
copied up whole at each `sync` (every few seconds and at the end); a single write of an object
is atomic, as a rename is on a local disk.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import fsspec

from jpeglm.errors import ConfigError, JpeglmError


def is_url(path: str | os.PathLike) -> bool:
  return "://" in os.fspath(path)


def join(base: str, *parts: str) -> str:
  if is_url(base):
    return "/".join([base.rstrip("/"), *parts])
  return os.path.join(base, *parts)


def filesystem(path: str, doing: str = "use"):
  """(fsspec filesystem, path inside it); a one-line error for an unknown protocol or a
  missing package (gcs:// needs gcsfs, the `gcs` extra)."""
  try:
    return fsspec.core.url_to_fs(path)
  except (ImportError, ValueError) as e:
    raise JpeglmError(f"cannot {doing} {path}: {str(e).splitlines()[0]}") from None


def exists(path: str) -> bool:
  path = os.fspath(path)
  if not is_url(path):
    return os.path.exists(path)
  fs, inner = filesystem(path)
  return fs.exists(inner)


def makedirs(path: str) -> None:
  """A local folder and its parents; object stores need none."""
  if not is_url(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  path = os.fspath(path)
  if not is_url(path):
    with open(path, "rb") as f:
      return f.read()
  fs, inner = filesystem(path)
  with fs.open(inner, "rb") as f:
    return f.read()


def write_bytes(path: str, data: bytes) -> None:
  """Writes `path` whole: readers see the old content or the new, never half of it."""
  path = os.fspath(path)
  if is_url(path):
    fs, inner = filesystem(path)
    with fs.open(inner, "wb") as f:
      f.write(data)
    return
  temporary = f"{path}.tmp-{os.getpid()}"
  try:
    with open(temporary, "wb") as f:
      f.write(data)
    os.replace(temporary, path)
  finally:
    if os.path.exists(temporary):
      os.remove(temporary)


def local_copy(path: str) -> str:
  """A local path holding `path`'s bytes (for libraries that read only local files, such as
  SentencePiece); `path` itself when it is local."""
  path = os.fspath(path)
  if not is_url(path):
    return path
  folder = tempfile.mkdtemp(prefix="jpeglm-")
  target = os.path.join(folder, path.rstrip("/").rsplit("/", 1)[-1])
  with open(target, "wb") as f:
    f.write(read_bytes(path))
  return target


class Mirror:
  """A local folder that stands for `target` (a local path: the folder itself; a URL: a
  staging folder copied up by `sync`, at most every `every_seconds` unless forced)."""

  def __init__(self, target: str, every_seconds: float = 30.0):
    self.target, self.every_seconds = target, every_seconds
    self.remote = is_url(target)
    self.local = tempfile.mkdtemp(prefix="jpeglm-mirror-") if self.remote else target
    os.makedirs(self.local, exist_ok=True)
    self._synced = time.monotonic()
    self._uploaded: dict[str, tuple[int, int]] = {}  # local path -> (size, mtime) copied up

  def path(self, *parts: str) -> str:
    return os.path.join(self.local, *parts)

  def due(self) -> bool:
    """A remote mirror whose last copy is older than `every_seconds`."""
    return self.remote and time.monotonic() - self._synced >= self.every_seconds

  def sync(self) -> None:
    """Copies up the files that changed since the last copy (a remote mirror only)."""
    if not self.remote:
      return
    self._synced = time.monotonic()
    for root, _, names in os.walk(self.local):
      for name in names:
        local = os.path.join(root, name)
        stat = os.stat(local)
        if self._uploaded.get(local) == (stat.st_size, stat.st_mtime_ns):
          continue
        relative = os.path.relpath(local, self.local).split(os.sep)
        with open(local, "rb") as f:
          write_bytes(join(self.target, *relative), f.read())
        self._uploaded[local] = (stat.st_size, stat.st_mtime_ns)

  def close(self) -> None:
    self.sync()
    if self.remote:
      shutil.rmtree(self.local, ignore_errors=True)


def read_json(path: str, kind: type = dict):
  """A JSON file's content; a damaged file is a one-line ConfigError naming it."""
  try:
    value = json.loads(read_bytes(path).decode("utf-8"))
  except json.JSONDecodeError as e:
    raise ConfigError(f"{path} is damaged: not JSON ({e.msg} at line {e.lineno}, column "
                      f"{e.colno})") from None
  except UnicodeDecodeError:
    raise ConfigError(f"{path} is damaged: not UTF-8 text") from None
  except OSError as e:
    raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
  if not isinstance(value, kind):
    raise ConfigError(f"{path} is damaged: holds a JSON {type(value).__name__}, not an "
                      f"{'object' if kind is dict else kind.__name__}")
  return value
