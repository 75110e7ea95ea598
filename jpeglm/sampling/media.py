"""Prompts from real media, and sampled bytes back to pictures, for images and videos."""

from __future__ import annotations

import numpy as np
from PIL import Image

from jpeglm.codecs import AvcCodec, CodecError, JpegCodec, open_image
from jpeglm.tokenizer import ByteTokenizer


def image_prompt(codec: JpegCodec, tokenizer: ByteTokenizer, path: str, ratio: float
                 ) -> tuple[list[int], bytes, Image.Image]:
  """BOS + tokens of the image's stream cut at `ratio` of its rows (the paper's prompt),
  the full stream, and the image as the model sees it (for side-by-side grids)."""
  stream = codec.encode(open_image(path))
  prompt = codec.prefix(stream, ratio)
  return [tokenizer.bos_id, *tokenizer.encode(prompt)], stream, codec.decode(stream).image


def video_prompt(codec: AvcCodec, tokenizer: ByteTokenizer, path: str, frames: int
                 ) -> tuple[list[int], bytes]:
  stream = codec.encode(path)
  return [tokenizer.bos_id, *tokenizer.encode(codec.prefix(stream, frames))], stream


def sample_bytes(tokenizer: ByteTokenizer, prompt: list[int], generated: list[int]) -> bytes:
  return tokenizer.decode([*prompt, *generated])


def decode_image(codec: JpegCodec, data: bytes):
  """(image or None, complete, reason) for sampled bytes, after the authors' repair."""
  try:
    decoded = codec.decode(codec.repair(data))
  except CodecError as e:
    return None, False, str(e)
  return decoded.image, decoded.complete, decoded.reason


def decode_video(codec: AvcCodec, data: bytes):
  try:
    decoded = codec.decode(data)
  except CodecError as e:
    return [], False, str(e)
  return decoded.frames, decoded.complete, decoded.reason


def side_by_side(images: list[Image.Image | None], size: int, gap: int = 4) -> Image.Image:
  """Images in one row (grey where an image is missing)."""
  canvas = Image.new("RGB", (len(images) * (size + gap) - gap, size), (255, 255, 255))
  for i, image in enumerate(images):
    tile = image.resize((size, size)) if image is not None else Image.new("RGB", (size, size),
                                                                           (128, 128, 128))
    canvas.paste(tile, (i * (size + gap), 0))
  return canvas


def stack_rows(rows: list[Image.Image], gap: int = 4) -> Image.Image:
  width = max(r.width for r in rows)
  canvas = Image.new("RGB", (width, sum(r.height for r in rows) + gap * (len(rows) - 1)),
                     (255, 255, 255))
  y = 0
  for r in rows:
    canvas.paste(r, (0, y))
    y += r.height + gap
  return canvas


def frame_strip(frames: list[np.ndarray], height: int = 72) -> Image.Image:
  """Video frames side by side, scaled to `height`."""
  if not frames:
    return Image.new("RGB", (height, height), (128, 128, 128))
  tiles = [Image.fromarray(f) for f in frames]
  width = int(tiles[0].width * height / tiles[0].height)
  canvas = Image.new("RGB", (len(tiles) * width, height))
  for i, tile in enumerate(tiles):
    canvas.paste(tile.resize((width, height)), (i * width, 0))
  return canvas
