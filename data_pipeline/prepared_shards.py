"""ArrayRecord shards of token documents, as `jpeglm prepare` writes them.

DIR/
  train-00000.arrayrecord ...  one record per document (BOS..EOS ids, little-endian), in order
  eval-00000.arrayrecord ...   the held-out split
  tokenizer.model                       the tokenizer the ids belong to
  meta.json                             token dtype, tokenizer hash, codec, counts
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain
import numpy as np
from array_record.python import array_record_module

from jpeglm.runtime import files
from jpeglm.errors import JpeglmError

META_FILE = "meta.json"
SHARD_SUFFIX = ".arrayrecord"


def token_dtype(vocab_size: int) -> str:
  """The smallest little-endian dtype for the ids: 2 bytes per token for any paper vocabulary."""
  return "<u2" if vocab_size <= 1 << 16 else "<i4"


def shard_glob(out_dir: str, split: str) -> str:
  return os.path.join(out_dir, f"{split}-*{SHARD_SUFFIX}")


def write_meta(out_dir: str, meta: dict[str, Any]) -> None:
  with open(os.path.join(out_dir, META_FILE), "w") as f:
    json.dump(meta, f, indent=2, sort_keys=True)
    f.write("\n")


def read_meta(shard_dir: str) -> dict[str, Any]:
  path = os.path.join(shard_dir, META_FILE)
  if not os.path.isfile(path):
    raise JpeglmError(f"{path} is missing: ArrayRecord sources must be written by jpeglm prepare")
  meta = files.read_json(path)
  missing = [k for k in ("token_dtype", "tokenizer_sha256") if k not in meta]
  if missing:
    raise JpeglmError(f"{path} is damaged: it has no {missing[0]}")
  return meta


class ShardWriter:
  """Appends token documents to one ArrayRecord file."""

  def __init__(self, path: str, dtype: str):
    # group_size 1: every record is its own chunk, so random access reads one document.
    self._writer = array_record_module.ArrayRecordWriter(path, "group_size:1")
    self._dtype = np.dtype(dtype)

  def write(self, tokens: np.ndarray) -> None:
    self._writer.write(np.asarray(tokens).astype(self._dtype).tobytes())

  def close(self) -> None:
    self._writer.close()


def open_shards(paths: list[str]) -> grain.sources.ArrayRecordDataSource:
  """A random-access source over the records of `paths` (in path order)."""
  return grain.sources.ArrayRecordDataSource(paths)


def read_documents(paths: list[str], dtype: str) -> list[np.ndarray]:
  """Every document of `paths`, in record order (tests and tools)."""
  source = open_shards(paths)
  return [np.frombuffer(source[i], dtype=dtype).astype(np.int32) for i in range(len(source))]
