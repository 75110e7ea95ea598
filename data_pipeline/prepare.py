"""Offline preparation: encode + tokenize a source once into ArrayRecord shards.

Large runs then read token documents (`arrayrecord:DIR/train-*.arrayrecord`) instead of
decoding and re-encoding every image each epoch. Documents are the ones the on-the-fly
pipeline makes, in source order (built-in media: the first epoch's crops).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import shutil
import time

import grain
import ml_collections
import tqdm

from data_pipeline import packing, pipeline, prepared_shards, tokenizer_training, workers
from data_pipeline.bad_inputs import BadInputsError
from jpeglm.errors import JpeglmError
from jpeglm.tokenizer import ByteTokenizer

log = logging.getLogger("jpeglm.data")
TOKENIZER_FILE = "tokenizer.model"
DEFAULT_RECORDS_PER_SHARD = 10_000  # ~100 MB of 256x256 JPEG documents at 2 bytes per token
LOGGED_ERRORS = 5


@dataclasses.dataclass
class SplitSummary:
  split: str
  files: int = 0
  documents: int = 0
  tokens: int = 0
  codec_bytes: int = 0
  skipped: int = 0
  shards: int = 0
  errors: list[str] = dataclasses.field(default_factory=list)

  def line(self) -> str:
    return (f"{self.split}: {self.files} items -> {self.documents} documents, {self.tokens:,} "
            f"tokens, {self.shards} shards; {self.skipped} skipped")


class _RollingShardWriter:
  """Writes `records_per_shard` documents per file, in order: split-00000.arrayrecord, ..."""

  def __init__(self, out_dir: str, split: str, dtype: str, records_per_shard: int):
    self.out_dir, self.split, self.dtype = out_dir, split, dtype
    self.records_per_shard = records_per_shard
    self.shards = 0
    self._writer = None
    self._in_shard = 0

  def write(self, tokens) -> None:
    if self._writer is None or self._in_shard == self.records_per_shard:
      self.close()
      path = os.path.join(self.out_dir,
                          f"{self.split}-{self.shards:05d}{prepared_shards.SHARD_SUFFIX}")
      self._writer = prepared_shards.ShardWriter(path, self.dtype)
      self.shards += 1
      self._in_shard = 0
    self._writer.write(tokens)
    self._in_shard += 1

  def close(self) -> None:
    if self._writer is not None:
      self._writer.close()
      self._writer = None


def _tokenizer(config: ml_collections.ConfigDict, out_dir: str, num_workers: int
               ) -> ByteTokenizer:
  target = os.path.join(out_dir, TOKENIZER_FILE)
  if config.tokenizer.path:
    if os.path.abspath(config.tokenizer.path) != os.path.abspath(target):
      ByteTokenizer.load(config.tokenizer.path)  # fails clearly before copying
      shutil.copyfile(config.tokenizer.path, target)
    return ByteTokenizer.load(target)
  log.warning("tokenizer.path is empty: training a %d-token BPE on %d files of %s",
              config.tokenizer.vocab_size, config.tokenizer.num_files, config.data.source)
  return tokenizer_training.train_tokenizer_from_source(config, target, num_workers)


def _prepare_split(config, tokenizer, split, out_dir, num_workers, records_per_shard,
                   progress) -> SplitSummary:
  summary = SplitSummary(split)
  documents = pipeline.encoded_documents(
      config, tokenizer, split=split, process_index=0, process_count=1, shuffle=False,
      repeat=False, seed=config.seed)
  dataset = documents.dataset  # an IterDataset already for wds: / parquet: (shard_size None)
  if isinstance(dataset, grain.MapDataset):
    dataset = dataset.to_iter_dataset(pipeline.read_options(config.data))
  stream = workers.with_workers(dataset, num_workers)
  writer = _RollingShardWriter(out_dir, split, prepared_shards.token_dtype(tokenizer.vocab_size),
                               records_per_shard)
  piece_lengths = packing.piece_lengths(tokenizer)
  try:
    with workers.iterate(stream) as documents_iter:
      for document in tqdm.tqdm(documents_iter, total=documents.shard_size, desc=f"prepare {split}",
                                unit="file", disable=not progress):
        summary.files += 1
        if "error" in document:
          summary.skipped += 1
          if len(summary.errors) < LOGGED_ERRORS:
            summary.errors.append(document["error"])
            log.warning("skipping bad input: %s", document["error"])
          continue
        tokens = document["tokens"]
        writer.write(tokens)
        summary.documents += 1
        summary.tokens += len(tokens)
        summary.codec_bytes += int(piece_lengths[tokens].sum())
  finally:
    writer.close()
  summary.shards = writer.shards
  return summary


def prepare(config: ml_collections.ConfigDict, out_dir: str, *, num_workers: int = 0,
            records_per_shard: int = DEFAULT_RECORDS_PER_SHARD, progress: bool = True
            ) -> list[SplitSummary]:
  """Writes DIR/{train,eval}-NNNNN.arrayrecord, tokenizer.model and meta.json."""
  if config.data.source.startswith("arrayrecord:"):
    raise JpeglmError(f"{config.data.source} is prepared already")
  if records_per_shard < 1:
    raise JpeglmError(f"records_per_shard={records_per_shard}: must be >= 1")
  os.makedirs(out_dir, exist_ok=True)
  for name in os.listdir(out_dir):
    if name.endswith(prepared_shards.SHARD_SUFFIX):
      raise JpeglmError(f"{out_dir} already holds shards ({name}); use an empty folder")
  started = time.time()
  tokenizer = _tokenizer(config, out_dir, num_workers)
  summaries = []
  for split in ("train", "eval"):
    _, indices = pipeline.split_source(config, split)
    if len(indices):
      summaries.append(_prepare_split(config, tokenizer, split, out_dir, num_workers,
                                      records_per_shard, progress))
  prepared_shards.write_meta(out_dir, {
      "source": config.data.source,
      "eval_source": config.data.eval_source,
      "codec": config.codec.to_dict(),
      "token_dtype": prepared_shards.token_dtype(tokenizer.vocab_size),
      "tokenizer_sha256": hashlib.sha256(tokenizer.serialized()).hexdigest(),
      "vocab_size": tokenizer.vocab_size,
      "splits": {s.split: dataclasses.asdict(s) for s in summaries},
      "seconds": round(time.time() - started, 1),
  })
  seen = sum(s.files for s in summaries)
  skipped = sum(s.skipped for s in summaries)
  if seen and skipped > config.data.max_bad_fraction * seen:
    raise BadInputsError(f"{skipped} of {seen} files could not be encoded, more than "
                         f"data.max_bad_fraction={config.data.max_bad_fraction} (first: "
                         f"{next(e for s in summaries for e in s.errors)})")
  return summaries


def training_overrides(out_dir: str, summaries: list[SplitSummary]) -> list[str]:
  """The --config overrides that train from the shards just written."""
  overrides = [f"--config.data.source=arrayrecord:{prepared_shards.shard_glob(out_dir, 'train')}",
               f"--config.tokenizer.path={os.path.join(out_dir, TOKENIZER_FILE)}"]
  if any(s.split == "eval" for s in summaries):
    overrides.insert(1, "--config.data.eval_source=arrayrecord:"
                     f"{prepared_shards.shard_glob(out_dir, 'eval')}")
  return overrides
