"""Turning any image a user hands us into 8-bit RGB, and opening image files defensively."""

from __future__ import annotations

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from jpeglm.codecs.errors import CodecError

# Pillow's own default bomb threshold (~89.5 MP): larger declared sizes are refused unopened.
DEFAULT_MAX_PIXELS = 89_478_485
_EXIF_ORIENTATION = 0x0112
_WHITE = (255, 255, 255, 255)
_ALPHA_MODES = {"RGBA", "LA", "PA", "La", "RGBa"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I;16N", "I"}


def _flatten_alpha(image: Image.Image) -> Image.Image:
  # Transparent pixels would otherwise keep whatever colour they hide; white is the usual page.
  rgba = image.convert("RGBA")
  return Image.alpha_composite(Image.new("RGBA", rgba.size, _WHITE), rgba).convert("RGB")


def _sixteen_bit_to_rgb(image: Image.Image) -> Image.Image:
  values = np.asarray(image)
  # "I" holds 32-bit ints: take it as 16-bit data when it exceeds the 8-bit range.
  if image.mode != "I" or values.max(initial=0) > 255:
    values = np.clip(values, 0, 65535) >> 8
  return Image.fromarray(values.astype(np.uint8)).convert("RGB")


def array_to_image(array: np.ndarray) -> Image.Image:
  """HxW, HxWx1, HxWx3 or HxWx4 arrays of uint8 (or uint16, scaled down) to a PIL image."""
  if not isinstance(array, np.ndarray) or array.ndim not in (2, 3):
    raise CodecError(f"expected an HxW or HxWxC image array, got shape {getattr(array, 'shape', None)}")
  if array.ndim == 3 and array.shape[2] not in (1, 3, 4):
    raise CodecError(f"image array has {array.shape[2]} channels; expected 1, 3 or 4")
  if array.shape[0] == 0 or array.shape[1] == 0:
    raise CodecError(f"image array is empty: shape {array.shape}")
  if array.dtype == np.uint16:
    array = (array >> 8).astype(np.uint8)
  elif array.dtype == np.bool_:
    array = array.astype(np.uint8) * 255
  elif array.dtype != np.uint8:
    raise CodecError(f"image array dtype {array.dtype} is ambiguous; pass uint8 (0..255)")
  if array.ndim == 3 and array.shape[2] == 1:
    array = array[:, :, 0]
  return Image.fromarray(np.ascontiguousarray(array))  # uint8: L, RGB or RGBA by shape


def to_rgb(image: Image.Image | np.ndarray) -> Image.Image:
  """Any PIL image (any mode, EXIF-rotated) or image array as an upright 8-bit RGB image."""
  if isinstance(image, np.ndarray):
    image = array_to_image(image)
  if not isinstance(image, Image.Image):
    raise CodecError(f"expected a PIL image or a numpy array, got {type(image).__name__}")
  if image.width == 0 or image.height == 0:
    raise CodecError(f"image is empty: {image.width}x{image.height}")
  try:
    if image.getexif().get(_EXIF_ORIENTATION, 1) != 1:
      image = ImageOps.exif_transpose(image)
  except Exception:  # noqa: BLE001 - broken EXIF must not lose the picture itself
    pass
  mode = image.mode
  if mode == "RGB":
    return image
  if mode in _ALPHA_MODES or (mode == "P" and "transparency" in image.info):
    return _flatten_alpha(image)
  if mode in _SIXTEEN_BIT_MODES:
    return _sixteen_bit_to_rgb(image)
  if mode == "F":
    values = np.clip(np.asarray(image), 0, 255).astype(np.uint8)
    return Image.fromarray(values).convert("RGB")
  return image.convert("RGB")


def open_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
               min_side: int | None = None) -> Image.Image:
  """Opens and fully loads an image file, refusing bombs before any pixel is allocated.

  `min_side` lets the JPEG loader decode at a reduced DCT scale while keeping the shorter
  side at least that long (Pillow's draft mode): much faster for large photos.
  """
  name = os.fspath(path)
  try:
    empty = os.path.getsize(name) == 0
  except OSError as e:
    raise CodecError(f"{name}: cannot open ({e})") from None
  if empty:
    raise CodecError(f"{name}: empty file")
  return _load_checked(lambda: Image.open(name), name, max_pixels, min_side)


def image_from_bytes(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, name: str = "image",
                     min_side: int | None = None) -> Image.Image:
  """`open_image` for an encoded image held in memory (a dataset record); `name` for errors."""
  if not data:
    raise CodecError(f"{name}: empty image bytes")
  return _load_checked(lambda: Image.open(io.BytesIO(data)), name, max_pixels, min_side)


def _load_checked(opener, name: str, max_pixels: int, min_side: int | None) -> Image.Image:
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("error", Image.DecompressionBombWarning)
      image = opener()
  except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
    raise CodecError(f"{name}: refused as a decompression bomb ({e})") from None
  except UnidentifiedImageError:
    raise CodecError(f"{name}: not an image Pillow can read") from None
  except OSError as e:
    raise CodecError(f"{name}: cannot open ({e})") from None
  width, height = image.size
  if width * height > max_pixels:
    image.close()
    raise CodecError(f"{name}: declared size {width}x{height} exceeds the {max_pixels}-pixel limit")
  if min_side and image.format == "JPEG" and min(width, height) > 2 * min_side:
    scale = min_side / min(width, height)
    image.draft("RGB", (max(1, round(width * scale)), max(1, round(height * scale))))
  try:
    image.load()
  except (OSError, SyntaxError, ValueError) as e:
    raise CodecError(f"{name}: unreadable image data ({e})") from None
  return image
