"""Prompts from real media, and sampled tokens back to pictures, for images and videos.

`to_picture` is the one way from a sample's tokens to an image: `jpeglm sample`, the
trainer's sample grids, the evaluation protocol and the demos all use it, so they agree on
what a valid sample is: every generated token stands for bytes (no UNK, no stray BOS), and
the bytes, after the authors' repair, decode completely.
"""

from __future__ import annotations

import dataclasses

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


NOT_BYTES = "a generated token stands for no bytes (UNK or BOS)"


def sampled_bytes(tokenizer: ByteTokenizer, prompt: list[int], generated: list[int]
                  ) -> tuple[bytes, bool]:
  """The bytes of prompt + generated tokens up to the first generated token that stands for
  no bytes (UNK, a stray BOS: an invalid sample), and whether there was none."""
  invalid = {tokenizer.unk_id, tokenizer.bos_id}
  cut = next((i for i, t in enumerate(generated)
              if t in invalid or not 0 <= t < tokenizer.vocab_size), None)
  kept = list(generated) if cut is None else list(generated[:cut])
  return tokenizer.decode([*prompt, *kept]), cut is None


@dataclasses.dataclass(frozen=True)
class Picture:
  data: bytes  # the sample's bytes as sampled (before repair)
  image: Image.Image | None  # what decodes, None when nothing does
  valid: bool  # only byte tokens, and the bytes decode completely
  reason: str  # why not valid ("" when valid)


def to_picture(codec: JpegCodec, tokenizer: ByteTokenizer, prompt: list[int],
               generated: list[int]) -> Picture:
  """A sampled image: its bytes, what decodes of them, and whether it is valid."""
  data, only_bytes = sampled_bytes(tokenizer, prompt, generated)
  image, complete, reason = decode_image(codec, data)
  if not only_bytes:
    reason = NOT_BYTES
  return Picture(data, image, bool(complete) and only_bytes, "" if complete and only_bytes
                 else reason)


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
