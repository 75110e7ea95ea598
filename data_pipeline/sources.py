"""Random-access sources named by `config.data.source`, and the train / held-out split of them.

Each source is a Grain random-access source (`__len__` + `__getitem__`) of *items*:
  - `builtin:photos`, `builtin:videos`, a folder path: file paths (str);
  - `builtin:digits`: records {"image": 28x28 uint8, "label", "path"} (data_pipeline.digits);
  - `tfds:NAME[/CONFIG]:SPLIT`: tfds records (dicts) read from array_record files, with image
    features left encoded (`SkipDecoding`) so Pillow, not TensorFlow, decodes them;
  - `arrayrecord:GLOB`: serialized token documents written by `jpeglm prepare`.
Streaming sources have no random access: their `items` are the shard files, read by
`data_pipeline.streaming` into {"name", "data"} items:
  - `wds:GLOB`: WebDataset tar shards (data_pipeline.wds_source);
  - `parquet:GLOB[:COLUMN]`: Hugging Face parquet files (data_pipeline.parquet_source).
GLOBs of these and of `arrayrecord:` may be fsspec URLs (`gs://...`: data_pipeline.remote_files).
"""

from __future__ import annotations

import dataclasses
import glob
import os
from typing import Any

import numpy as np

from data_pipeline import digits, media_files
from jpeglm.errors import JpeglmError

# Item kinds: what the encoding stage has to do with an item.
FILE, TFDS_RECORD, TOKENS = "file", "tfds_record", "tokens"
STREAM = "stream"  # items are shard files; the documents come from `reader`
STREAM_PREFIXES = ("wds:", "parquet:")


@dataclasses.dataclass(frozen=True)
class Source:
  spec: str
  items: Any            # a random-access source: len() and [i]
  item_kind: str        # FILE, TFDS_RECORD or TOKENS
  augment: bool         # builtin media: random crops and flips, an endless varied stream
  token_dtype: str = "" # TOKENS only: dtype of the stored ids
  tokenizer_sha256: str = ""  # TOKENS only: the tokenizer the shards were written with
  reader: Any = None    # STREAM only: (file, start) -> items ({"name", "data" | "error"})


def _tfds_source(spec: str, data_dir: str, feature: str) -> Source:
  import tensorflow_datasets as tfds  # slow-ish import, only for tfds sources

  parts = spec[len("tfds:"):].rsplit(":", 1)
  if len(parts) != 2 or not all(parts):
    raise JpeglmError(f"tfds source {spec!r}: write it as tfds:NAME[/CONFIG]:SPLIT")
  name, split = parts
  try:
    builder = tfds.builder(name, data_dir=data_dir or None)
    decoders = None
    if isinstance(builder.info.features[feature], tfds.features.Image):
      decoders = {feature: tfds.decode.SkipDecoding()}
    items = builder.as_data_source(split=split, decoders=decoders)
  except KeyError:
    raise JpeglmError(f"tfds dataset {name!r} has no feature {feature!r} "
                      "(set config.data.tfds_feature)") from None
  except Exception as e:  # noqa: BLE001 - tfds raises many types; the user needs one line
    raise JpeglmError(f"cannot open {spec} under data_dir={data_dir or '~/tensorflow_datasets'}: "
                      f"{str(e).splitlines()[0]}") from None
  return Source(spec, items, TFDS_RECORD, augment=False)


def _arrayrecord_source(spec: str, cache_dir: str = "") -> Source:
  from data_pipeline import prepared_shards, remote_files

  pattern = spec[len("arrayrecord:"):]
  if remote_files.is_url(pattern):  # read by random access: local copies of remote shards
    paths = remote_files.local_copies(remote_files.glob_files(pattern), cache_dir)
  else:
    paths = sorted(glob.glob(pattern))
  if not paths:
    raise JpeglmError(f"no ArrayRecord shards match {pattern!r}")
  meta = prepared_shards.read_meta(os.path.dirname(paths[0]))
  items = prepared_shards.open_shards(paths)
  return Source(spec, items, TOKENS, augment=False, token_dtype=meta["token_dtype"],
                tokenizer_sha256=meta["tokenizer_sha256"])


def open_source(spec: str, kind: str, tfds_data_dir: str = "", tfds_feature: str = "image",
                cache_dir: str = "") -> Source:
  """The source named by `spec`; `kind` is "image" or "video" (which files a folder yields)."""
  if not spec:
    raise JpeglmError("empty data source: set config.data.source")
  if spec.startswith("tfds:"):
    return _tfds_source(spec, tfds_data_dir, tfds_feature)
  if spec.startswith("arrayrecord:"):
    return _arrayrecord_source(spec, cache_dir)
  if spec.startswith(STREAM_PREFIXES):
    from data_pipeline import streaming
    files, reader = streaming.open_files(spec, kind)
    return Source(spec, files, STREAM, augment=False, reader=reader)
  if spec == digits.SPEC:
    if kind != "image":
      raise JpeglmError(f"{spec} holds images; it cannot feed a video codec")
    return Source(spec, digits.DigitRecords(), TFDS_RECORD, augment=False)
  files = media_files.media_files(spec, kind)
  return Source(spec, files, FILE, augment=spec.startswith("builtin:"))


def holdout_indices(length: int, fraction: float) -> np.ndarray:
  """Indices held out for evaluation: evenly spread, independent of any seed, at least one
  (none for a one-item source)."""
  if length < 2 or fraction <= 0:
    return np.zeros((0,), np.int64)
  count = min(length - 1, max(1, round(length * fraction)))
  return np.unique(np.linspace(0, length - 1, count).round().astype(np.int64))


def split_indices(length: int, split: str, eval_fraction: float) -> np.ndarray:
  """The item indices of `split` ("train" or "eval") when both come from one source."""
  held_out = holdout_indices(length, eval_fraction)
  if split == "eval":
    return held_out
  if split != "train":
    raise JpeglmError(f"split={split!r}: use train or eval")
  return np.setdiff1d(np.arange(length), held_out)
