"""Random square crops and flips: how 21 built-in photos (and 3 clips) become an endless,
varied, seeded stream. Folder and dataset sources use the paper's centre crop instead."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# The crop keeps at least half of the shorter side, so the subject stays recognisable.
MIN_CROP_FRACTION = 0.5


def item_rng(seed: int, index: int) -> np.random.Generator:
  """The generator for stream position `index`: the same crop every time that position is read."""
  return np.random.default_rng([seed, index])


def random_square_crop(image: Image.Image, rng: np.random.Generator) -> Image.Image:
  """A random square crop (side in [MIN_CROP_FRACTION, 1] of the shorter side), maybe mirrored."""
  width, height = image.size
  side = max(1, int(min(width, height) * rng.uniform(MIN_CROP_FRACTION, 1.0)))
  left = int(rng.integers(0, width - side + 1))
  top = int(rng.integers(0, height - side + 1))
  crop = image.crop((left, top, left + side, top + side))
  return ImageOps.mirror(crop) if rng.random() < 0.5 else crop


def random_zoom_frames(frames: list[Image.Image], rng: np.random.Generator) -> list[Image.Image]:
  """One random zoom window (aspect kept) and one flip decision applied to every frame."""
  width, height = frames[0].size
  scale = rng.uniform(MIN_CROP_FRACTION + 0.25, 1.0)
  w, h = max(2, int(width * scale)), max(2, int(height * scale))
  left = int(rng.integers(0, width - w + 1))
  top = int(rng.integers(0, height - h + 1))
  mirror = rng.random() < 0.5
  out = []
  for frame in frames:
    zoomed = frame.crop((left, top, left + w, top + h)).resize((width, height),
                                                                Image.Resampling.BICUBIC)
    out.append(ImageOps.mirror(zoomed) if mirror else zoomed)
  return out
