"""JPEG-LM's image codec: the exact byte stream the model reads and writes.

Encoding follows the paper: square resize/crop to `size`, baseline JPEG from Pillow at
`quality` with `subsampling`, standard Huffman tables, a restart marker after every MCU, and
the quantization + Huffman tables stripped (an "abbreviated" stream: SOI, APP0, SOF0, DRI,
SOS, scan, EOI). Decoding splices the tables back, which gives pixels identical to an
ordinary encode.

`color="gray"` writes one component (luma only, 8x8 MCUs, `subsampling` unused), otherwise
the same stream: for digits, documents, medical scans. Its decodes are mode "L" images.
"""

from __future__ import annotations

import contextlib
import functools
import io
import math
import threading

import numpy as np
from PIL import Image, ImageFile, ImageOps

from jpeglm.codecs import jpeg_huffman, jpeg_stream
from jpeglm.codecs.decoded import Decoded
from jpeglm.codecs.errors import CodecError
from jpeglm.codecs.image_input import DEFAULT_MAX_PIXELS, to_rgb

SUBSAMPLINGS = ("4:4:4", "4:2:2", "4:2:0")
COLORS = {"rgb": "RGB", "gray": "L"}  # codec.color -> the Pillow mode encoded and decoded
_EOI = b"\xff\xd9"
# LOAD_TRUNCATED_IMAGES is a Pillow global; flip it only around our own decodes.
_TRUNCATED_LOCK = threading.Lock()


@contextlib.contextmanager
def _allow_truncated():
  with _TRUNCATED_LOCK:
    before = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
      yield
    finally:
      ImageFile.LOAD_TRUNCATED_IMAGES = before


class JpegCodec:
  """Images <-> the paper's JPEG byte streams. Settings are fixed per instance."""

  def __init__(self, size: int = 256, quality: int = 25, subsampling: str = "4:2:0",
               restart_every_mcu: bool = True, strip_tables: bool = True,
               max_pixels: int = DEFAULT_MAX_PIXELS, color: str = "rgb"):
    if not isinstance(size, int) or size < 8:
      raise CodecError(f"JpegCodec size={size!r}: must be an integer >= 8")
    if not isinstance(quality, int) or not 1 <= quality <= 100:
      raise CodecError(f"JpegCodec quality={quality!r}: must be an integer in 1..100")
    if subsampling not in SUBSAMPLINGS:
      raise CodecError(f"JpegCodec subsampling={subsampling!r}: choose one of {SUBSAMPLINGS}")
    if color not in COLORS:
      raise CodecError(f"JpegCodec color={color!r}: choose one of {tuple(COLORS)}")
    self.size = size
    self.quality = quality
    self.subsampling = subsampling
    self.restart_every_mcu = restart_every_mcu
    self.strip_tables = strip_tables
    self.max_pixels = max_pixels
    self.color = color
    self.mode = COLORS[color]

  def __repr__(self) -> str:
    return (f"JpegCodec(size={self.size}, quality={self.quality}, subsampling={self.subsampling!r}, "
            f"restart_every_mcu={self.restart_every_mcu}, strip_tables={self.strip_tables}, "
            f"color={self.color!r})")

  def _save_options(self) -> dict:
    # comment=b"": Pillow would otherwise copy a source image's COM segment into the stream.
    options = dict(format="JPEG", quality=self.quality, subsampling=self.subsampling,
                   optimize=False, progressive=False, comment=b"")
    if self.restart_every_mcu:
      options["restart_marker_blocks"] = 1
    return options

  @functools.cached_property
  def tables(self) -> bytes:
    """The DQT + DHT segments that a stripped stream leaves out (no SOI/EOI)."""
    out = io.BytesIO()
    Image.new(self.mode, (16, 16)).save(out, **self._save_options(), streamtype=1)
    return out.getvalue()[2:-2]

  # ---- encoding -------------------------------------------------------------------------

  def fit(self, image: Image.Image | np.ndarray) -> Image.Image:
    """Upright RGB (L for gray), shorter side resized to `size`, centre square crop (the
    paper's crop)."""
    rgb = to_rgb(image)
    if rgb.size != (self.size, self.size):
      rgb = ImageOps.fit(rgb, (self.size, self.size), Image.Resampling.BICUBIC)
    return rgb if self.mode == "RGB" else rgb.convert(self.mode)

  def encode_fitted(self, image: Image.Image) -> bytes:
    """Encodes an image that is already `size` x `size` (see `fit`), in the codec's mode."""
    if image.mode != self.mode:
      image = image.convert(self.mode)
    out = io.BytesIO()
    image.save(out, **self._save_options(), streamtype=2 if self.strip_tables else 0)
    return out.getvalue()

  def encode(self, image: Image.Image | np.ndarray) -> bytes:
    """A PIL image or HxW(x3) uint8 array of any size and mode -> the paper's byte stream."""
    return self.encode_fitted(self.fit(image))

  # ---- decoding -------------------------------------------------------------------------

  def header(self, data: bytes) -> jpeg_stream.JpegHeader:
    return jpeg_stream.parse_header(data, self.max_pixels)

  def decode(self, data: bytes) -> Decoded:
    """Bytes -> Decoded(image, complete). Damaged scans decode what they can; never raises
    for them. A stream that is unusable as a whole raises CodecError."""
    data = bytes(data)
    header = self.header(data)
    layout = jpeg_stream.scan_layout(data, header.scan_start)
    tables = b"" if header.has_quant_tables else self.tables
    extra = () if header.huffman_tables else self.huffman_tables
    checked = jpeg_huffman.valid_mcus(data, header, layout.restart_offsets, layout.end, extra)
    problems = []
    if layout.end_marker != jpeg_stream.EOI:
      problems.append("truncated scan (no EOI)" if layout.end_marker is None
                      else f"unexpected marker 0xFF{layout.end_marker:02X} inside the scan")
    elif layout.end + 2 != len(data):
      problems.append(f"{len(data) - layout.end - 2} bytes after EOI")
    if not layout.markers_in_order:
      problems.append("restart markers out of order")
    if checked is not None and not checked[1]:
      problems.append("scan data does not decode cleanly")
    if header.restart_interval and checked is None:
      expected = math.ceil(header.num_mcus / header.restart_interval) - 1
      if len(layout.restart_offsets) != expected:
        problems.append(f"{len(layout.restart_offsets)} restart markers, expected {expected}")
    # What libjpeg gets: tables back in, the scan up to its end, then EOI.
    stream = data[:2] + tables + data[2:layout.end] + _EOI
    image = self._pixels(stream, self.mode)
    if checked is None:
      rows = header.height if not problems else 0
    else:
      rows = min(header.height, checked[0] // header.mcus_per_row * header.mcu_size[1])
    if image is None:
      problems.append("libjpeg could not decode the scan")
      image, rows = Image.new(self.mode, (header.width, header.height), (128,) * len(self.mode)), 0
    return Decoded(image=image, complete=not problems, reason="; ".join(problems),
                   valid_rows=rows if problems else header.height)

  def standalone(self, data: bytes) -> bytes:
    """A stream any JPEG viewer opens: the stripped tables spliced back in after SOI."""
    data = bytes(data)
    if self.header(data).has_quant_tables:
      return data
    return data[:2] + self.tables + data[2:]

  @staticmethod
  def repair(data: bytes) -> bytes:
    """What the paper's authors do with sampled bytes: keep the first SOI..EOI span and add
    a missing SOI or EOI."""
    data = bytes(data)
    start = data.find(b"\xff\xd8")
    data = data[start:] if start >= 0 else b"\xff\xd8" + data
    end = data.find(b"\xff\xd9", 2)
    return data[:end + 2] if end >= 0 else data + b"\xff\xd9"

  @functools.cached_property
  def huffman_tables(self) -> tuple[jpeg_stream.HuffmanTable, ...]:
    """The Huffman tables this codec's streams are coded with (Pillow's standard ones): the
    ones a stripped stream leaves out."""
    return jpeg_stream.parse_header(self._tables_probe, self.max_pixels).huffman_tables

  @functools.cached_property
  def _tables_probe(self) -> bytes:
    # A tiny full stream whose header carries the standard tables, for the Huffman check.
    out = io.BytesIO()
    Image.new(self.mode, (8, 8)).save(out, **self._save_options())
    return out.getvalue()

  @staticmethod
  def _pixels(stream: bytes, mode: str) -> Image.Image | None:
    try:
      with _allow_truncated():
        image = Image.open(io.BytesIO(stream))
        image.load()
      return image.convert(mode) if image.mode != mode else image
    except (OSError, SyntaxError, ValueError):
      return None

  # ---- prompts --------------------------------------------------------------------------

  def prefix_rows(self, ratio: float) -> int:
    """Pixel rows that `prefix(data, ratio)` keeps for a `size` x `size` image."""
    mcu_h = 16 if self.subsampling == "4:2:0" and self.color == "rgb" else 8
    return min(self.size, math.floor(ratio * math.ceil(self.size / mcu_h) + 1e-9) * mcu_h)

  def prefix(self, data: bytes, ratio: float) -> bytes:
    """The stream cut after the MCU rows covering `ratio` of the image, as the paper cuts it.

    The cut falls right after the restart marker that ends the last kept MCU row (for a 256
    image at 4:2:0, r=0.25 keeps 64 rows: the bytes up to the 8th RST7). Rows are whole MCU
    rows, so ratios that land inside one round down.
    """
    if not 0.0 <= ratio <= 1.0:
      raise CodecError(f"prefix ratio {ratio!r} must be in [0, 1]")
    data = bytes(data)
    header = self.header(data)
    layout = jpeg_stream.scan_layout(data, header.scan_start)
    rows = math.floor(ratio * header.mcu_rows + 1e-9)
    mcus = rows * header.mcus_per_row
    if mcus == 0:
      return data[:header.scan_start]
    if mcus >= header.num_mcus:
      return data[:layout.end]
    interval = header.restart_interval
    if not interval or mcus % interval:
      raise CodecError(f"cannot cut after MCU row {rows}: the stream has no restart marker there "
                       f"(restart interval {interval or 'none'}); encode with restart_every_mcu")
    marker = mcus // interval - 1
    if marker >= len(layout.restart_offsets):
      raise CodecError(f"stream has {len(layout.restart_offsets)} restart markers; ratio {ratio} "
                       f"needs {marker + 1}")
    return data[:layout.restart_offsets[marker] + 2]
