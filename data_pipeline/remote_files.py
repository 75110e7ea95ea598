"""One file layer for data sources: local paths and any fsspec URL (`gs://`, `s3://`, ...).

Streaming sources (`wds:`, `parquet:`) glob and open their shards through fsspec, so a
bucket is read in place with no unpacking (`gs://` needs the `gcs` extra: gcsfs). ArrayRecord
shards are read by random access in C++ from local files: remote ones are copied once into a
local cache folder (`data.cache_dir`) and read from there.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from typing import IO

from jpeglm.errors import JpeglmError
from jpeglm.runtime.files import filesystem, is_url


def _filesystem(path: str):
  return filesystem(path, "read")


def glob_files(pattern: str) -> list[str]:
  """Files matching `pattern`, sorted; URLs come back as URLs with their protocol."""
  fs, path = _filesystem(pattern)
  try:
    found = sorted(p for p in fs.glob(path) if fs.isfile(p))
  except OSError as e:
    raise JpeglmError(f"cannot list {pattern}: {str(e).splitlines()[0]}") from None
  if is_url(pattern):
    return [fs.unstrip_protocol(p) for p in found]
  return found


def open_file(path: str) -> IO[bytes]:
  """A binary file object for reading `path` (local path or URL); the caller closes it."""
  fs, inner = _filesystem(path)
  return fs.open(inner, "rb")


def local_copies(paths: list[str], cache_dir: str = "") -> list[str]:
  """Local paths holding `paths` (URLs are copied once into `cache_dir`, per source folder,
  with the folder's meta.json; local paths are returned as they are)."""
  if not paths or not is_url(paths[0]):
    return list(paths)
  folder_url = paths[0].rsplit("/", 1)[0]
  cache_root = cache_dir or os.path.join(tempfile.gettempdir(), "jpeglm-remote")
  folder = os.path.join(cache_root, hashlib.sha256(folder_url.encode()).hexdigest()[:16])
  os.makedirs(folder, exist_ok=True)
  local = []
  siblings = [f"{folder_url}/meta.json"] if _exists(f"{folder_url}/meta.json") else []
  for url in [*paths, *siblings]:
    fs, inner = _filesystem(url)
    target = os.path.join(folder, url.rsplit("/", 1)[1])
    if not os.path.isfile(target) or os.path.getsize(target) != fs.size(inner):
      partial = target + ".partial"
      with fs.open(inner, "rb") as src, open(partial, "wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 22)
      os.replace(partial, target)  # a half-copied shard is never taken for a whole one
    if url in paths:
      local.append(target)
  return local


def _exists(url: str) -> bool:
  fs, inner = _filesystem(url)
  return fs.exists(inner)
