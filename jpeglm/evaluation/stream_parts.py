"""Where a model spends its bits in a JPEG stream: the header, the restart markers, and the
entropy-coded data of flat and of detailed MCUs.

A model that has learned the format but not the pictures spends almost nothing on the
header and markers and almost all its bits on the detailed MCUs. For the digits demo
(jpeglm.demos.digits) that tells a newcomer why samples still look like noise: a few
hundred steps learn the background blocks exactly and the strokes' bytes barely below
random (8 bits a byte).

A token's bits are shared among the bytes it spells, equally; "flat" MCUs are those whose
entropy-coded data is at most FLAT_BYTES bytes (a DC value and an end-of-block: a uniform
8x8 block, such as a digit's black background).
"""

from __future__ import annotations

import numpy as np

from jpeglm.codecs import jpeg_stream

PARTS = ("header", "markers", "flat_mcus", "detailed_mcus", "end")
FLAT_BYTES = 2


def byte_parts(stream: bytes, max_pixels: int = 1 << 26) -> np.ndarray:
  """The part (an index into PARTS) of every byte of one JPEG stream."""
  header = jpeg_stream.parse_header(stream, max_pixels)
  layout = jpeg_stream.scan_layout(stream, header.scan_start)
  parts = np.full(len(stream), PARTS.index("end"), np.int8)
  parts[:header.scan_start] = PARTS.index("header")
  starts = [header.scan_start] + [o + 2 for o in layout.restart_offsets]
  ends = list(layout.restart_offsets) + [layout.end]
  for start, end in zip(starts, ends):
    kind = "flat_mcus" if end - start <= FLAT_BYTES else "detailed_mcus"
    parts[start:end] = PARTS.index(kind)
  for offset in layout.restart_offsets:
    parts[offset:offset + 2] = PARTS.index("markers")
  return parts


def bits_by_part(tokenizer, streams: list[bytes], bits: list[np.ndarray],
                 max_pixels: int = 1 << 26) -> dict[str, dict[str, float]]:
  """{part: {"bits": per stream, "bytes": per stream, "bits_per_byte"}} over `streams`,
  with `bits` from `bits_per_byte.token_bits`; EOS's bits count to "end"."""
  return spread_token_bits(tokenizer, streams, bits, lambda s: byte_parts(s, max_pixels), PARTS)


def spread_token_bits(tokenizer, streams: list[bytes], bits: list[np.ndarray], parts_of,
                      names: tuple[str, ...]) -> dict[str, dict[str, float]]:
  """`bits_by_part` for any codec: `parts_of(stream)` gives each byte's index into `names`,
  whose last entry takes EOS's bits."""
  total_bits = np.zeros(len(names))
  total_bytes = np.zeros(len(names))
  for stream, stream_bits in zip(streams, bits):
    parts = parts_of(stream)
    at = 0
    for token, token_bits_ in zip(tokenizer.encode(stream), stream_bits):
      span = parts[at:at + len(tokenizer.piece_bytes(token))]
      np.add.at(total_bits, span, token_bits_ / len(span))
      at += len(span)
    if at != len(stream):
      raise ValueError(f"the tokens spell {at} bytes of a {len(stream)}-byte stream")
    total_bits[len(names) - 1] += stream_bits[-1]
    np.add.at(total_bytes, parts, 1)
  n = max(len(streams), 1)
  return {part: {"bits": float(total_bits[i] / n), "bytes": float(total_bytes[i] / n),
                 "bits_per_byte": float(total_bits[i] / max(total_bytes[i], 1))}
          for i, part in enumerate(names)}


def byte_bits_by_part(streams: list[bytes], bits: list[np.ndarray],
                      max_pixels: int = 1 << 26) -> dict[str, dict[str, float]]:
  """As `bits_by_part` for a model that gives each byte its own bits (a byte n-gram)."""
  total_bits = np.zeros(len(PARTS))
  total_bytes = np.zeros(len(PARTS))
  for stream, stream_bits in zip(streams, bits):
    parts = byte_parts(stream, max_pixels)
    np.add.at(total_bits, parts, stream_bits)
    np.add.at(total_bytes, parts, 1)
  n = max(len(streams), 1)
  return {part: {"bits": float(total_bits[i] / n), "bytes": float(total_bytes[i] / n),
                 "bits_per_byte": float(total_bits[i] / max(total_bytes[i], 1))}
          for i, part in enumerate(PARTS)}
