"""Training the byte BPE from a config's data source (when `tokenizer.path` is empty)."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable

import ml_collections

from data_pipeline import pipeline, workers
from jpeglm.errors import JpeglmError
from jpeglm.tokenizer import ByteTokenizer

log = logging.getLogger("jpeglm.data")


def codec_streams(config: ml_collections.ConfigDict, num_files: int, num_workers: int = 0,
                  progress: Callable[[int], object] | None = None
                  ) -> tuple[list[bytes], list[str]]:
  """Codec bytes of up to `num_files` training items (a shuffled sample), and the errors of
  the items that could not be encoded."""
  # One pass over a plain source: a small stream gives each item once, not num_files copies.
  # Augmented built-in media give a new crop on every pass (opened again to repeat: they are
  # a few dozen files).
  documents = pipeline.encoded_documents(
      config, None, split="train", process_index=0, process_count=1, shuffle=True,
      repeat=False, seed=config.seed)
  if documents.source.augment:
    documents = pipeline.encoded_documents(
        config, None, split="train", process_index=0, process_count=1, shuffle=True,
        repeat=True, seed=config.seed)
  if documents.source.item_kind not in ("file", "tfds_record", "stream"):
    raise JpeglmError(f"{documents.source.spec} holds tokens already; use the tokenizer.model "
                      "written next to its shards")
  if documents.shard_size is None:  # wds: / parquet: the first items of the shuffled stream
    count, dataset = num_files, documents.dataset
  else:
    # Augmented built-in media give a new crop on every pass; a plain source one pass at most.
    count = num_files if documents.source.augment else min(num_files, documents.shard_size)
    dataset = documents.dataset[:count].to_iter_dataset(pipeline.read_options(config.data))
  stream = workers.with_workers(dataset, num_workers)
  streams, errors = [], []
  with workers.iterate(stream) as documents_iter:
    for document in itertools.islice(documents_iter, count):
      if "error" in document:
        errors.append(document["error"])
      else:
        streams.append(document["codec_bytes"])
      if progress is not None:
        progress(1)
  return streams, errors


def train_tokenizer_from_source(config: ml_collections.ConfigDict, path: str,
                                num_workers: int = 0) -> ByteTokenizer:
  """Trains `config.tokenizer.vocab_size` BPE on `config.tokenizer.num_files` items of
  `config.data.source` and writes it to `path`."""
  streams, errors = codec_streams(config, config.tokenizer.num_files, num_workers)
  for error in errors[:5]:
    log.warning("tokenizer training skipped: %s", error)
  if not streams:
    raise JpeglmError(f"no usable media in {config.data.source} to train a tokenizer on")
  distinct = len(set(streams))
  print(f"training a {config.tokenizer.vocab_size}-token tokenizer on {len(streams)} items of "
        f"{config.data.source} ({distinct} distinct streams; tokenizer.num_files="
        f"{config.tokenizer.num_files}"
        + (f", {len(errors)} unreadable" if errors else "") + f") -> {path}")
  return ByteTokenizer.train(streams, config.tokenizer.vocab_size, path)
