"""Seeded augmentation, so that a small source becomes an endless, varied stream:
  - "crop": random square crops and flips, how 21 built-in photos (and 3 clips) are used;
  - "affine": small random shifts, rotations and scalings of each training digit
    (`data.augment=affine`), as MNIST training has long done: 4,000 digits stop being 11
    epochs of the same streams.
Every draw comes from `item_rng(seed, stream position)`, so a resumed run reads the same
items. Folder and dataset sources use the paper's centre crop instead.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageOps

# The crop keeps at least half of the shorter side, so the subject stays recognisable.
MIN_CROP_FRACTION = 0.5
KINDS = ("crop", "affine")
# Affine ranges for digits: within what a writer's hand varies (LeCun et al. 1998 used
# similar distortions); larger turns make 6s into 9s.
MAX_SHIFT_PIXELS = 2.0
MAX_ROTATION_DEGREES = 10.0
SCALE_RANGE = (0.9, 1.1)


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


def random_affine(image: Image.Image, rng: np.random.Generator) -> Image.Image:
  """The image turned, scaled and shifted about its centre (bilinear; uncovered pixels take
  the background, black for MNIST). Size and mode are kept."""
  width, height = image.size
  angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
  scale = rng.uniform(*SCALE_RANGE)
  dx, dy = rng.uniform(-MAX_SHIFT_PIXELS, MAX_SHIFT_PIXELS, size=2)
  # PIL maps each output pixel back to an input pixel: the inverse of the wanted motion.
  cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
  cx, cy = (width - 1) / 2, (height - 1) / 2
  ox, oy = cx + dx, cy + dy  # where the centre moves to
  a, b, d, e = cos, sin, -sin, cos
  c = cx - a * ox - b * oy
  f = cy - d * ox - e * oy
  return image.transform(image.size, Image.Transform.AFFINE, (a, b, c, d, e, f),
                         resample=Image.Resampling.BILINEAR, fillcolor=0)
