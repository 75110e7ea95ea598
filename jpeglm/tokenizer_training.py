"""Collecting codec streams to train a tokenizer on: N files from a source, encoded once.

Built-in sources hold only a few dozen files, so past their count they yield seeded random
square crops and flips of them, the same augmentation the `builtin:` data sources use.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import random
from collections.abc import Callable

from PIL import Image, ImageOps

from data_pipeline.media_files import media_files
from jpeglm.codecs import AvcCodec, CodecError, JpegCodec, open_image


@dataclasses.dataclass
class EncodedCorpus:
  streams: list[bytes]
  skipped: list[tuple[str, str]]  # (path, reason)
  source_files: int


def random_view(image: Image.Image, rng: random.Random) -> Image.Image:
  """A random square crop (50-100% of the shorter side) of `image`, flipped half the time."""
  side = min(image.size)
  crop = max(1, int(side * rng.uniform(0.5, 1.0)))
  left = rng.randint(0, image.width - crop)
  top = rng.randint(0, image.height - crop)
  view = image.crop((left, top, left + crop, top + crop))
  return ImageOps.mirror(view) if rng.random() < 0.5 else view


def _encode_file(codec, path: str, view_seed: int | None) -> bytes:
  if isinstance(codec, AvcCodec):
    return codec.encode(path)
  image = open_image(path, codec.max_pixels)
  if view_seed is not None:
    image = random_view(image.convert("RGB"), random.Random(view_seed))
  return codec.encode(image)


def _job(args):
  codec, path, view_seed = args
  try:
    return path, _encode_file(codec, path, view_seed), ""
  except CodecError as e:
    return path, b"", str(e)


def encode_corpus(codec: JpegCodec | AvcCodec, source: str, num_files: int, seed: int = 0,
                  workers: int = 1, progress: Callable[[int], None] | None = None
                  ) -> EncodedCorpus:
  """Encodes up to `num_files` files of `source` with `codec`, skipping (and listing) bad ones."""
  kind = "video" if isinstance(codec, AvcCodec) else "image"
  files = media_files(source, kind)
  jobs = [(codec, path, None) for path in files[:num_files]]
  if source.startswith("builtin:") and kind == "image":
    # Past the shipped files: seeded random views of them, cycling through the list.
    jobs += [(codec, files[k % len(files)], seed * 1_000_003 + k)
             for k in range(len(files), num_files)]
  streams, skipped = [], []
  with concurrent.futures.ProcessPoolExecutor(workers) if workers > 1 else _Inline() as pool:
    for path, stream, reason in pool.map(_job, jobs, chunksize=max(1, len(jobs) // (8 * workers))):
      if stream:
        streams.append(stream)
      else:
        skipped.append((path, reason))
      if progress:
        progress(1)
  return EncodedCorpus(streams, skipped, len(files))


class _Inline:
  """A stand-in for a process pool that maps in this process (workers=1)."""

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    return False

  @staticmethod
  def map(fn, items, chunksize=1):
    return map(fn, items)


def default_workers() -> int:
  return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
