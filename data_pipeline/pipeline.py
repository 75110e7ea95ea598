"""The trainer's entry points: `make_train_iterator` and `make_eval_iterator`.

source indices -> this process's shard -> shuffle (a new order each epoch) -> repeat ->
encode (decode, crop, codec, tokenize; in Grain workers) -> skip bad inputs -> pack to
seq_len -> batch of global_batch / process_count -> worker prefetch.
"""

from __future__ import annotations

import dataclasses
import os

import grain
import ml_collections
import numpy as np

from data_pipeline import bad_inputs, packing, sources, streaming, workers
from data_pipeline.batch_iterator import BatchIterator
from data_pipeline.document_encoding import DocumentEncoder
from jpeglm.errors import JpeglmError
from jpeglm.runtime import files as remote
from jpeglm.tokenizer import ByteTokenizer

# Evaluation data gets its own crop stream, never the training one.
EVAL_SEED_OFFSET = 1_000_003


def media_kind(config: ml_collections.ConfigDict) -> str:
  return "video" if config.codec.name == "avc" else "image"


def process_shard(process_index: int | None, process_count: int | None) -> tuple[int, int]:
  """This process's (index, count); defaults come from JAX, which must then be importable."""
  if process_index is None or process_count is None:
    import jax  # only asked when the caller did not say
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise JpeglmError(f"process_index={process_index} is not in [0, {process_count})")
  return process_index, process_count


def split_source(config: ml_collections.ConfigDict, split: str
                 ) -> tuple[sources.Source, np.ndarray]:
  """The source a split reads and the item indices that belong to it."""
  data = config.data
  kind = media_kind(config)
  feature = data.tfds_feature or kind
  cache_dir = data.cache_dir
  if split == "eval" and data.eval_source:
    source = sources.open_source(data.eval_source, kind, data.tfds_data_dir, feature, cache_dir)
    return source, np.arange(len(source.items))
  source = sources.open_source(data.source, kind, data.tfds_data_dir, feature, cache_dir)
  if data.eval_source:
    if split not in ("train", "eval"):
      raise JpeglmError(f"split={split!r}: use train or eval")
    return source, np.arange(len(source.items))
  fraction = data.eval_fraction
  if source.item_kind == sources.STREAM:
    # Streams are held out by item (streaming.ItemFilter), so both splits read every file.
    if split not in ("train", "eval"):
      raise JpeglmError(f"split={split!r}: use train or eval")
    none = split == "eval" and fraction <= 0
    return source, np.arange(0 if none else len(source.items))
  return source, sources.split_indices(len(source.items), split, fraction)


class _EncodeStreamed:
  """Grain `map` function for streaming sources: a read item -> document."""

  def __init__(self, encoder: DocumentEncoder):
    self.encoder = encoder

  def __call__(self, item: dict) -> dict:
    return self.encoder(-1, item, 0)


class _EncodeAt:
  """Grain `map_with_index` function: stream position + source index -> document."""

  def __init__(self, encoder: DocumentEncoder, items):
    self.encoder = encoder
    self.items = items

  def __call__(self, stream_index: int, source_index) -> dict:
    source_index = int(source_index)
    return self.encoder(source_index, self.items[source_index], stream_index)


def _check_tokenizer(source: sources.Source, tokenizer: ByteTokenizer | None) -> None:
  if source.item_kind != sources.TOKENS or tokenizer is None:
    return
  import hashlib
  if hashlib.sha256(tokenizer.serialized()).hexdigest() != source.tokenizer_sha256:
    raise JpeglmError(f"{source.spec} was tokenized with another tokenizer than "
                      f"{tokenizer.path or 'the one given'}; use the tokenizer.model next to the "
                      "shards")


@dataclasses.dataclass(frozen=True)
class Documents:
  # {"tokens" | "codec_bytes" | "error", "source"} per position; an IterDataset for streams
  dataset: grain.MapDataset | grain.IterDataset
  shard_size: int | None     # items of this process's shard (one epoch); None: a stream
  source: sources.Source
  stream_files: int = 0      # streams: the files of this process's shard


def augment_kind(config: ml_collections.ConfigDict, source: sources.Source, split: str) -> str:
  """"crop", "affine" or "" (none) for this split: `data.augment` is "auto" (the source's
  own: crops for built-in media), "none", "crop" or "affine". Affine changes only the training
  split: held-out digits stay the real ones."""
  kind = config.data.augment
  if kind == "auto":
    return "crop" if source.augment else ""
  if kind == "none":
    return ""
  if source.item_kind == sources.TOKENS or (kind == "affine" and media_kind(config) != "image"):
    raise JpeglmError(f"data.augment={kind!r} needs an image source, not {source.spec}")
  return "" if kind == "affine" and split != "train" else kind


def _stream_filter(config: ml_collections.ConfigDict, source: sources.Source, split: str
                   ) -> streaming.ItemFilter:
  """A streaming source's split by item name, unless data.eval_source gives one."""
  if source.item_kind != sources.STREAM or config.data.eval_source:
    return streaming.ItemFilter()
  roots = [f.rsplit("/", 1)[0] + "/" if "/" in f else "" for f in source.items]
  root = os.path.commonprefix(roots)
  return streaming.ItemFilter(split=split, eval_fraction=float(config.data.eval_fraction),
                              seed=int(config.seed), name_root=root[:root.rfind("/") + 1])


# Streams of more files than this are not counted at start-up (`jpeglm prepare` counts them).
MAX_FILES_TO_COUNT = 256


@dataclasses.dataclass(frozen=True)
class SplitSizes:
  """How many items each split holds (None: a stream of too many files to count at start)."""
  train: int | None
  eval: int | None
  line: str  # what the log says of it


def split_sizes(config: ml_collections.ConfigDict) -> SplitSizes:
  """Items per split, and one line saying so and how the eval split was chosen."""
  train, train_items = split_source(config, "train")
  eval_source, eval_items = split_source(config, "eval")
  if train.item_kind != sources.STREAM:
    how = ("data.eval_source" if config.data.eval_source
           else f"data.eval_fraction={config.data.eval_fraction} of the items")
    return SplitSizes(len(train_items), len(eval_items),
                      f"data: {len(train_items)} train items, {len(eval_items)} eval items ({how})")
  files = len(train.items) + (len(eval_source.items) if config.data.eval_source else 0)
  # A tar's names are its headers, one read per member: too many requests from a bucket.
  remote_tars = train.spec.startswith("wds:") and any(
      remote.is_url(f) for f in [*train.items, *(eval_source.items if config.data.eval_source
                                                  else [])])
  if files > MAX_FILES_TO_COUNT or remote_tars:
    return SplitSizes(None, None, f"data: {files} stream files, items not counted at start-up "
                                  "(jpeglm prepare counts them)")
  if config.data.eval_source:
    counts = {"train": sum(len(train.reader.names(f)) for f in train.items),
              "eval": sum(len(eval_source.reader.names(f)) for f in eval_source.items)}
    how = f"data.eval_source={config.data.eval_source}"
  else:
    counts = streaming.split_counts(train.items, train.reader,
                                    _stream_filter(config, train, "eval"))
    how = (f"held out by a seeded hash of each item's name, data.eval_fraction="
           f"{config.data.eval_fraction}")
  return SplitSizes(counts["train"], counts["eval"],
                    f"data: {counts['train']} train items, {counts['eval']} eval items in "
                    f"{len(train.items)} file(s) of {train.spec} ({how})")


def encoded_documents(config: ml_collections.ConfigDict, tokenizer: ByteTokenizer | None, *,
                      split: str, process_index: int, process_count: int, shuffle: bool,
                      repeat: bool, seed: int) -> Documents:
  """Random-access documents of one process's shard, bad ones as {"error"} records.
  Without a tokenizer, documents hold `codec_bytes` instead of `tokens`. Streaming sources
  give an IterDataset over this process's files (`shard_size` None)."""
  source, indices = split_source(config, split)
  _check_tokenizer(source, tokenizer)
  # Streams share their files, or with too few files their items (StreamDataset.share).
  shard = indices if source.item_kind == sources.STREAM else indices[process_index::process_count]
  if len(shard) == 0:
    unit = "files" if source.item_kind == sources.STREAM else "items"
    raise JpeglmError(f"{split} split of {source.spec} has {len(indices)} {unit}: too few for "
                      f"{process_count} processes")
  encoder = DocumentEncoder(
      dict(config.codec), tokenizer.serialized() if tokenizer is not None else None,
      source.item_kind, augment_kind(config, source, split), seed,
      tfds_feature=config.data.tfds_feature or media_kind(config),
      token_dtype=source.token_dtype,
      max_seconds_per_file=config.data.max_seconds_per_file)
  if source.item_kind == sources.STREAM:  # `shard` holds file indices
    stream = streaming.StreamDataset(
        [source.items[i] for i in shard], source.reader, seed=seed, shuffle=shuffle,
        shuffle_buffer=config.data.shuffle_buffer,
        repeat=repeat, item_filter=_stream_filter(config, source, split))
    stream.share(process_count, process_index, "data shards")
    return Documents(stream.map(_EncodeStreamed(encoder)), None, source, len(stream.files))
  ds = grain.MapDataset.source(shard)
  if shuffle:
    ds = ds.shuffle(seed=seed)  # followed by repeat: a fresh order every epoch
  if repeat:
    ds = ds.repeat()
  return Documents(ds.map_with_index(_EncodeAt(encoder, source.items)), len(shard), source)


def _batches(config: ml_collections.ConfigDict, tokenizer: ByteTokenizer, *, split: str,
             process_index: int | None, process_count: int | None, shuffle: bool, seed: int,
             num_workers: int) -> grain.IterDataset:
  process_index, process_count = process_shard(process_index, process_count)
  global_batch = config.train.global_batch
  if global_batch % process_count:
    raise JpeglmError(f"train.global_batch={global_batch} does not split evenly over "
                      f"{process_count} processes")
  packing_name = config.data.packing  # one of packing.PACKINGS: checked on load
  documents = encoded_documents(
      config, tokenizer, split=split, process_index=process_index, process_count=process_count,
      shuffle=shuffle, repeat=True, seed=seed)
  # Fewer stream files than workers is fine: the workers then share them by item
  # (streaming.StreamDataset.set_slice).
  dataset = documents.dataset
  if isinstance(dataset, grain.MapDataset):
    dataset = dataset.to_iter_dataset(read_options(config.data))
  good = bad_inputs.SkipBadInputs(dataset, config.data.max_bad_fraction,
                                  documents.shard_size or bad_inputs.MIN_ITEMS_BEFORE_CHECK)
  rows = packing.pack(good.map(packing.to_lm_example), packing_name, config.data.seq_len, seed)
  batches = rows.batch(global_batch // process_count, drop_remainder=True)
  batches = batches.map(packing.FinishBatch(packing.piece_lengths(tokenizer)))
  return workers.with_workers(batches, num_workers)


def read_options(data: ml_collections.ConfigDict) -> grain.ReadOptions:
  """Threads that encode documents ahead of the packer, and how many documents ahead.

  Grain's defaults (16 threads, 500 documents) cost a 2-core machine half its data time: the
  threads outnumber the cores, and Grain checks every prefetched document at each read
  (measured on the digits config: 22 ms of CPU a batch, 10.5 ms with 2 threads and 32).
  """
  threads = int(data.read_threads) or min(16, len(os.sched_getaffinity(0)))
  ahead = int(data.prefetch_documents) or 64
  if threads < 1 or ahead < 1:
    raise JpeglmError(f"data.read_threads={threads} and data.prefetch_documents={ahead} "
                      "must be positive (0: the defaults)")
  return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=ahead)


def make_train_iterator(config: ml_collections.ConfigDict, tokenizer: ByteTokenizer, *,
                        process_index: int | None = None, process_count: int | None = None,
                        split: str = "train") -> BatchIterator:
  """Endless training batches for this process (see `packing.FinishBatch` for the keys).

  Each batch holds global_batch / process_count rows of this process's disjoint shard;
  the trainer assembles the global batch (`jax.make_array_from_process_local_data`).
  """
  num_workers = config.data.num_workers
  batches = _batches(config, tokenizer, split=split, process_index=process_index,
                     process_count=process_count, shuffle=config.data.shuffle, seed=config.seed,
                     num_workers=num_workers)
  return BatchIterator(iter(batches), num_workers)


def make_eval_iterator(config: ml_collections.ConfigDict, tokenizer: ByteTokenizer, *,
                       num_batches: int | None = None, process_index: int | None = None,
                       process_count: int | None = None) -> BatchIterator:
  """`num_batches` (default data.eval_batches) held-out batches, the same ones on every call:
  unshuffled, own crop seed, and the same count on every process (no multi-host hang)."""
  num_batches = config.data.eval_batches if num_batches is None else num_batches
  batches = _batches(config, tokenizer, split="eval", process_index=process_index,
                     process_count=process_count, shuffle=False,
                     seed=config.seed + EVAL_SEED_OFFSET, num_workers=0)
  return BatchIterator(iter(batches), 0, num_batches=num_batches)
