"""Streaming sources (`wds:`, `parquet:`): items read front to back from this data shard's
files, mixed across files, with a small JSON state for exact resume.

There is no index of the whole dataset. A data shard reads its own files (file i of data
shard s: `files[s::num_shards]`, and Grain workers split those again), `cycle_length` of them
at once, taking items in turn, so that consecutive items come from different files. A window
of `shuffle_buffer` items is then permuted by a seed derived from (seed, window number).

Fewer files than readers (one parquet file, two workers) is no error. Parquet files are then
shared as their row groups ("units", read alone); where there are still fewer units than
readers (one tar shard, a one-group file), every reader reads them all and keeps every k-th
item (`ItemFilter.stride`): slower, said once in the log, and it works. Held-out items, when the source has no split of its own, are chosen by a seeded
hash of each item's name (relative to the source's folder), so the split is the same on every
host, under any number of readers, and needs no second file.

State: where the reading stood when the current window began (epoch, next file, the open
files and how many items each has given) plus the window number and how many of its items
were returned. Resuming re-reads that one window (raw bytes, no decoding) and goes on from
the same item: the batches equal those of an uninterrupted run. Each epoch visits the files
in a new order (seeded), and with `repeat` the stream never ends.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Iterator
from typing import Any

import grain
import numpy as np

from jpeglm.errors import JpeglmError

# Items in one shuffle window: ~50 MB of 100 KB web images per data shard and worker.
DEFAULT_SHUFFLE_BUFFER = 512

# A reader gives the items of one file from a position on: (path, start) -> iterator of dicts.
Reader = Callable[[str, int], Iterator[dict]]
log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ItemFilter:
  """Which items of its files a reader keeps: every `stride`-th from `offset` (by position in
  its file), and, with `eval_fraction` > 0, those on this `split`'s side of the name hash."""
  stride: int = 1
  offset: int = 0
  split: str = "train"
  eval_fraction: float = 0.0
  seed: int = 0
  name_root: str = ""  # stripped from item names before hashing: the split survives a move

  def then_stride(self, count: int, index: int) -> "ItemFilter":
    """This filter's items shared again among `count` readers; reader `index`'s share."""
    return dataclasses.replace(self, stride=self.stride * count,
                               offset=self.offset + self.stride * index)

  def keeps(self, position: int, item: dict) -> bool:
    if position % self.stride != self.offset:
      return False
    if self.eval_fraction <= 0:
      return True
    return self.held_out(str(item.get("name", ""))) == (self.split == "eval")

  def held_out(self, name: str) -> bool:
    """Whether the item named `name` belongs to the eval split."""
    return self.eval_fraction > 0 and is_held_out(_relative(name, self.name_root),
                                                  self.eval_fraction, self.seed)


def _relative(name: str, root: str) -> str:
  return name[len(root):] if root and name.startswith(root) else name


def is_held_out(name: str, eval_fraction: float, seed: int) -> bool:
  digest = hashlib.blake2b(f"{seed}:{name}".encode(), digest_size=8).digest()
  return int.from_bytes(digest, "little") / 2.0 ** 64 < eval_fraction


class _StreamIterator(grain.DatasetIterator):

  def __init__(self, files: list[str], reader: Reader, seed: int, shuffle: bool,
               shuffle_buffer: int, cycle_length: int, repeat: bool, item_filter: ItemFilter):
    super().__init__()
    self._files, self._reader, self._seed = files, reader, seed
    self._filter = item_filter
    self._shuffle, self._repeat = shuffle, repeat
    self._buffer_size = max(1, shuffle_buffer) if shuffle else 1
    # Unshuffled (prepare, evaluation): one file after another, in file order.
    self._cycle = max(1, min(cycle_length, len(files))) if shuffle else 1
    # Reading position: epoch, next file (index into the epoch's order), open slots
    # [[order index, items given]], and whose turn it is.
    self._read = {"epoch": 0, "next_file": 0, "slots": [], "turn": 0}
    self._open: list[Iterator[dict] | None] = []  # live readers, one per slot
    self._window_start = copy.deepcopy(self._read)
    self._window_index = 0
    self._window: list[dict] = []
    self._emitted = 0
    self._filled = False
    self._items_this_epoch = 1  # not known after a restore; only guards an empty epoch

  # ---- reading files in turn --------------------------------------------------------------

  def _order(self, epoch: int) -> np.ndarray:
    if not self._shuffle:
      return np.arange(len(self._files))
    return np.random.default_rng([self._seed, epoch]).permutation(len(self._files))

  def _open_slot(self, order_index: int, given: int) -> Iterator[dict]:
    path = self._files[int(self._order(self._read["epoch"])[order_index])]
    return iter(self._reader(path, given))

  def _fill_slots(self) -> bool:
    """Opens files until `cycle` slots are open; False when the stream has ended."""
    read = self._read
    while len(read["slots"]) < self._cycle:
      if read["next_file"] < len(self._files):
        read["slots"].append([read["next_file"], 0])
        self._open.append(None)
        read["next_file"] += 1
      elif read["slots"]:
        break  # the epoch's last files are draining
      elif self._repeat:
        if not self._items_this_epoch:
          raise JpeglmError(f"{len(self._files)} files gave no items in a whole epoch "
                            f"(first: {self._files[0]})")
        self._items_this_epoch = 0
        read["epoch"] += 1
        read["next_file"] = 0
      else:
        return False
    return True

  def _next_item(self) -> dict | None:
    read = self._read
    while True:
      if not self._fill_slots():
        return None
      slot = read["turn"] % len(read["slots"])
      if self._open[slot] is None:
        self._open[slot] = self._open_slot(*read["slots"][slot])
      item = next(self._open[slot], None)
      if item is None:  # this file is done: the next one takes its place
        del read["slots"][slot], self._open[slot]
        if read["slots"]:
          read["turn"] = slot % len(read["slots"])
        else:
          read["turn"] = 0
        continue
      position = read["slots"][slot][1]
      read["slots"][slot][1] += 1
      if not self._filter.keeps(position, item):
        continue  # another reader's item, or the other split's
      self._items_this_epoch += 1
      read["turn"] = (slot + 1) % len(read["slots"])
      return item

  # ---- the shuffle window -----------------------------------------------------------------

  def _fill_window(self) -> None:
    self._window_start = copy.deepcopy(self._read)
    window = []
    while len(window) < self._buffer_size:
      item = self._next_item()
      if item is None:
        break
      window.append(item)
    if self._shuffle and len(window) > 1:
      order = np.random.default_rng([self._seed, 1 << 20, self._window_index]).permutation(
          len(window))
      window = [window[i] for i in order]
    self._window = window
    self._filled = True

  def __next__(self) -> dict:
    if not self._filled:
      self._fill_window()
    if self._emitted >= len(self._window):
      if not self._window:
        raise StopIteration
      self._window_index += 1
      self._emitted = 0
      self._fill_window()
      if not self._window:
        raise StopIteration
    item = self._window[self._emitted]
    self._emitted += 1
    return item

  def get_state(self) -> dict[str, Any]:
    return {"read": copy.deepcopy(self._window_start if self._filled else self._read),
            "window": self._window_index, "emitted": self._emitted}

  def set_state(self, state: dict[str, Any]) -> None:
    self._read = {"epoch": int(state["read"]["epoch"]),
                  "next_file": int(state["read"]["next_file"]),
                  "slots": [[int(a), int(b)] for a, b in state["read"]["slots"]],
                  "turn": int(state["read"]["turn"])}
    self._open = [None] * len(self._read["slots"])
    self._window_index = int(state["window"])
    self._emitted = int(state["emitted"])
    self._window = []
    self._filled = False
    if self._emitted:  # re-read the window the checkpoint was taken in
      emitted = self._emitted
      self._fill_window()
      self._emitted = emitted


class StreamDataset(grain.IterDataset):
  """Items of `files` read by `reader`, in turns over `cycle_length` files, shuffled in
  windows of `shuffle_buffer` (see the module docstring)."""

  def __init__(self, files: list[str], reader: Reader, *, seed: int, shuffle: bool,
               shuffle_buffer: int, repeat: bool, cycle_length: int = 4,
               item_filter: ItemFilter = ItemFilter()):
    super().__init__()
    if not files:
      raise JpeglmError("a streaming source needs at least one file")
    self._files = list(files)
    self._filter = item_filter
    self._reader = reader
    self._seed, self._shuffle, self._repeat = seed, shuffle, repeat
    self._shuffle_buffer, self._cycle_length = shuffle_buffer, cycle_length

  @property
  def files(self) -> list[str]:
    return list(self._files)

  def share(self, readers: int, index: int, who: str = "data workers") -> None:
    """Keeps reader `index`'s share of `readers`: its files, round-robin. With fewer files
    than readers, files that split (parquet row groups) are shared as their parts; with still
    fewer parts than readers, each reader reads them all and keeps every `readers`-th item.
    Data shards (processes) and then Grain workers share the same way."""
    if readers <= 1:
      return
    units = getattr(self._reader, "units", None)  # parquet: row groups
    if len(self._files) < readers and units is not None:
      finer = [u for f in self._files for u in units(f)]
      if len(finer) > len(self._files) and index == 0:
        log.info("%d file(s) for %d %s: shared as %d row groups", len(self._files), readers,
                 who, len(finer))
      self._files = finer
    if len(self._files) < readers:
      if index == 0:
        log.warning("%d file(s) for %d %s: each reads them all and keeps every %d-th item "
                    "(slower; more files than readers avoid it)",
                    len(self._files), readers, who, readers)
      self._filter = self._filter.then_stride(readers, index)
    else:
      self._files = self._files[index::readers]

  def set_slice(self, sl: slice, sequential_slice: bool = False) -> None:
    """Grain workers: each takes its share of this data shard (`share`)."""
    del sequential_slice  # files are split round-robin either way
    self.share(sl.step or 1, sl.start or 0)

  def __iter__(self) -> _StreamIterator:
    return _StreamIterator(self._files, self._reader, self._seed, self._shuffle,
                           self._shuffle_buffer, self._cycle_length, self._repeat, self._filter)

  def __str__(self) -> str:
    return f"StreamDataset({len(self._files)} files)"


def open_files(spec: str, kind: str) -> tuple[list[str], Reader]:
  """The shard files and the reader of a `wds:GLOB` or `parquet:GLOB[:COLUMN]` source."""
  from data_pipeline import parquet_source, remote_files, wds_source

  if spec.startswith("wds:"):
    pattern, reader = spec[len("wds:"):], wds_source.TarReader(kind)
  elif spec.startswith("parquet:"):
    pattern, column = parquet_source.split_spec(spec[len("parquet:"):])
    reader = parquet_source.ParquetReader(column, kind)
  else:
    raise JpeglmError(f"{spec!r} is not a streaming source (wds:GLOB or parquet:GLOB[:COLUMN])")
  if not pattern:
    raise JpeglmError(f"{spec!r}: give a file glob after the colon")
  files = remote_files.glob_files(pattern)
  if not files:
    raise JpeglmError(f"no files match {pattern!r} ({spec})")
  return files, reader


def split_counts(files: list[str], reader: Reader, item_filter: ItemFilter
                 ) -> dict[str, int]:
  """Items per split of a held-out-by-name stream ({"train": n, "eval": m}), counted from
  the files' names alone (`reader.names`: tar headers, parquet footers), not their media."""
  counts = {"train": 0, "eval": 0}
  for path in files:
    for name in reader.names(path):
      counts["eval" if item_filter.held_out(name) else "train"] += 1
  return counts


def sample_items(spec: str, kind: str, count: int, seed: int) -> list[dict]:
  """`count` readable items ({"name", "data"}) of a `wds:` / `parquet:` source: its files in
  a seeded order, each read from the start (evaluation sets: `jpeglm eval --images`)."""
  files, reader = open_files(spec, kind)
  items: list[dict] = []
  for i in np.random.default_rng(seed).permutation(len(files)):
    for item in reader(files[int(i)], 0):
      if "data" in item:
        items.append(item)
        if len(items) == count:
          return items
  raise JpeglmError(f"{spec} has {len(items)} readable items; {count} were asked for")
