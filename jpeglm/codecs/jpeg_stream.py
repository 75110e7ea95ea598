"""Reading the marker structure of a JPEG byte stream: header segments, restart markers, EOI.

The header is parsed field by field (SOF, DRI, DQT/DHT, SOS) so that a stream can be judged
before any pixel is decoded: a missing SOI, a cut header or an absurd declared size is a
`CodecError` here, cheaply.
"""

from __future__ import annotations

import dataclasses
import math

from jpeglm.codecs.errors import CodecError

SOI, EOI, SOS, DQT, DHT, DRI = 0xD8, 0xD9, 0xDA, 0xDB, 0xC4, 0xDD
RST0, RST7 = 0xD0, 0xD7
# Start-of-frame markers: C0..CF except DHT (C4), JPG (C8) and DAC (CC).
SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
BASELINE_SOF = frozenset({0xC0, 0xC1})
_STANDALONE = frozenset(range(RST0, RST7 + 1)) | {0x01}


@dataclasses.dataclass(frozen=True)
class FrameComponent:
  id: int
  h: int  # horizontal sampling factor
  v: int  # vertical sampling factor
  quant_table: int


@dataclasses.dataclass(frozen=True)
class HuffmanTable:
  table_class: int  # 0 = DC, 1 = AC
  table_id: int
  counts: tuple[int, ...]  # number of codes of each length 1..16
  symbols: bytes


@dataclasses.dataclass(frozen=True)
class JpegHeader:
  """Everything before the entropy-coded scan, plus where that scan starts."""

  sof_marker: int
  width: int
  height: int
  components: tuple[FrameComponent, ...]
  scan_components: tuple[tuple[int, int, int], ...]  # (component id, DC table, AC table)
  restart_interval: int  # MCUs per restart interval; 0 = no restart markers
  has_quant_tables: bool
  huffman_tables: tuple[HuffmanTable, ...]
  scan_start: int  # offset of the first entropy-coded byte

  @property
  def interleaved(self) -> bool:
    return len(self.scan_components) > 1

  @property
  def mcu_size(self) -> tuple[int, int]:
    """(width, height) in pixels of one MCU."""
    if not self.interleaved:
      return 8, 8
    return 8 * max(c.h for c in self.components), 8 * max(c.v for c in self.components)

  @property
  def mcus_per_row(self) -> int:
    return math.ceil(self.width / self.mcu_size[0])

  @property
  def mcu_rows(self) -> int:
    return math.ceil(self.height / self.mcu_size[1])

  @property
  def num_mcus(self) -> int:
    return self.mcus_per_row * self.mcu_rows


@dataclasses.dataclass(frozen=True)
class ScanLayout:
  """Where the scan's restart markers lie and how it ends."""

  restart_offsets: tuple[int, ...]  # offset of each RSTn marker's 0xFF byte
  end: int  # offset where entropy data stops (a terminating marker or the end of data)
  end_marker: int | None  # EOI, another marker, or None when the data just stops
  markers_in_order: bool  # RST0..RST7 cycle without a gap


def _u16(data: bytes, i: int) -> int:
  return (data[i] << 8) | data[i + 1]


def _parse_sof(marker: int, body: bytes) -> tuple[int, int, tuple[FrameComponent, ...]]:
  if len(body) < 6:
    raise CodecError("malformed SOF segment: too short")
  height, width, count = _u16(body, 1), _u16(body, 3), body[5]
  if len(body) < 6 + 3 * count or count == 0:
    raise CodecError(f"malformed SOF segment: {count} components in {len(body)} bytes")
  comps = tuple(
      FrameComponent(body[6 + 3 * k], body[7 + 3 * k] >> 4, body[7 + 3 * k] & 15, body[8 + 3 * k])
      for k in range(count))
  if any(c.h not in (1, 2, 3, 4) or c.v not in (1, 2, 3, 4) for c in comps):
    raise CodecError("malformed SOF segment: sampling factor outside 1..4")
  return width, height, comps


def _parse_dht(body: bytes) -> list[HuffmanTable]:
  tables, i = [], 0
  while i < len(body):
    if i + 17 > len(body):
      raise CodecError("malformed DHT segment: cut inside a table")
    counts = tuple(body[i + 1:i + 17])
    total = sum(counts)
    if i + 17 + total > len(body):
      raise CodecError("malformed DHT segment: fewer symbols than counted")
    tables.append(HuffmanTable(body[i] >> 4, body[i] & 15, counts, bytes(body[i + 17:i + 17 + total])))
    i += 17 + total
  return tables


def parse_header(data: bytes, max_pixels: int) -> JpegHeader:
  """Parses SOI through SOS; raises CodecError with the reason if the stream is unusable."""
  if len(data) < 2 or data[0] != 0xFF or data[1] != SOI:
    raise CodecError("not a JPEG stream: it does not start with the SOI marker (FF D8)")
  i, frame, restart, has_dqt, huffman = 2, None, 0, False, []
  while True:
    if i >= len(data):
      raise CodecError(f"stream ends inside the header (after {len(data)} bytes, before SOS)")
    if data[i] != 0xFF:
      raise CodecError(f"malformed header: expected a marker at byte {i}, found 0x{data[i]:02X}")
    while i < len(data) and data[i] == 0xFF:  # fill bytes may precede a marker
      i += 1
    if i >= len(data):
      raise CodecError("stream ends inside the header (in a marker)")
    marker = data[i]
    i += 1
    if marker in _STANDALONE:
      continue
    if marker == EOI:
      raise CodecError("no image data: EOI comes before any scan (SOS)")
    if i + 2 > len(data):
      raise CodecError(f"stream ends inside the header (segment 0xFF{marker:02X})")
    length = _u16(data, i)
    if length < 2:
      raise CodecError(f"malformed header: segment 0xFF{marker:02X} has length {length}")
    if i + length > len(data):
      raise CodecError(f"stream ends inside the header (segment 0xFF{marker:02X} is cut)")
    body = data[i + 2:i + length]
    if marker in SOF_MARKERS:
      width, height, comps = _parse_sof(marker, body)
      if width == 0 or height == 0:
        raise CodecError(f"unsupported JPEG: declared size {width}x{height}")
      if width * height > max_pixels:
        raise CodecError(f"declared size {width}x{height} exceeds the {max_pixels}-pixel limit "
                         "(decompression bomb?)")
      frame = (marker, width, height, comps)
    elif marker == DRI:
      if len(body) < 2:
        raise CodecError("malformed DRI segment")
      restart = _u16(body, 0)
    elif marker == DQT:
      has_dqt = True
    elif marker == DHT:
      huffman.extend(_parse_dht(body))
    elif marker == SOS:
      if frame is None:
        raise CodecError("malformed header: SOS before any SOF (frame) segment")
      if not body or len(body) < 1 + 2 * body[0] + 3:
        raise CodecError("malformed SOS segment")
      count = body[0]
      scan = tuple((body[1 + 2 * k], body[2 + 2 * k] >> 4, body[2 + 2 * k] & 15) for k in range(count))
      marker_, width, height, comps = frame
      return JpegHeader(marker_, width, height, comps, scan, restart, has_dqt, tuple(huffman),
                        i + length)
    i += length


def scan_layout(data: bytes, start: int) -> ScanLayout:
  """Finds restart markers and the end of the entropy-coded data that begins at `start`."""
  offsets, in_order = [], True
  i = data.find(b"\xff", start)
  while i != -1:
    j = i + 1
    while j < len(data) and data[j] == 0xFF:  # 0xFF fill bytes before a marker
      j += 1
    if j >= len(data):
      return ScanLayout(tuple(offsets), i, None, in_order)
    nxt = data[j]
    if nxt == 0x00:  # stuffed byte: 0xFF in the data
      i = data.find(b"\xff", j + 1)
      continue
    if RST0 <= nxt <= RST7:
      if nxt - RST0 != len(offsets) % 8:
        in_order = False
      offsets.append(j - 1)
      i = data.find(b"\xff", j + 1)
      continue
    return ScanLayout(tuple(offsets), i, nxt, in_order)
  return ScanLayout(tuple(offsets), len(data), None, in_order)
