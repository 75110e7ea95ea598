"""Checking a baseline scan's Huffman-coded data, one restart interval at a time.

libjpeg decodes damaged data silently (it warns and fills garbage), so "does it decode" is
answered here instead: each interval must hold exactly its MCUs' worth of valid codes,
padded with 1-bits to the byte. This is the JPEG spec's decoding procedure (ITU T.81 F.2.2)
without the inverse DCT: sizes and run lengths only, no coefficient values.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

from jpeglm.codecs.jpeg_stream import HuffmanTable, JpegHeader

_PEEK_BITS = 16
_INVALID = -1
MAX_DC_SIZE = 11  # baseline DC differences take at most 11 bits (T.81 F.1.2.1)
BLOCK_END = 64  # coefficient index once a block is over


def canonical_codes(table: HuffmanTable) -> Iterator[tuple[int, int, int]]:
  """(length, code, symbol) of every code of a table: the canonical assignment (T.81 C.2),
  codes of one length consecutive, each length's first code after the last shorter one."""
  code, k = 0, 0
  for length in range(1, 17):
    for _ in range(table.counts[length - 1]):
      yield length, code, table.symbols[k]
      code += 1
      k += 1
    code <<= 1


def _next_k(k: int, symbol: int) -> int:
  run, size = symbol >> 4, symbol & 15
  if size == 0:
    if run != 15:
      return BLOCK_END  # EOB (libjpeg ends the block on any run with size 0 but ZRL)
    return k + 16 if k + 16 <= BLOCK_END else _INVALID  # ZRL: 16 zeros
  return k + run + 1 if k + run <= 63 else _INVALID


# NEXT_K[k][symbol]: the coefficient index after AC `symbol` read at index k (1..63):
# BLOCK_END when the block is over, -1 when the symbol runs past coefficient 63.
NEXT_K = tuple(tuple(_next_k(k, s) for s in range(256)) if k else () for k in range(64))
# Largest k at which an AC symbol may be read (-1: nowhere).
LAST_K = tuple(max((k for k in range(1, 64) if NEXT_K[k][s] >= 0), default=-1)
               for s in range(256))


@functools.lru_cache(maxsize=64)
def lookup_table(table: HuffmanTable) -> tuple[int, ...]:
  """Maps every 16-bit window to (code length << 8 | symbol), or -1 where no code starts."""
  lut = [_INVALID] * (1 << _PEEK_BITS)
  for length, code, symbol in canonical_codes(table):
    span = 1 << (_PEEK_BITS - length)
    start = code << (_PEEK_BITS - length)
    lut[start:start + span] = [(length << 8) | symbol] * span
  return tuple(lut)


def mcu_blocks(header: JpegHeader, extra: tuple[HuffmanTable, ...] = ()
               ) -> list[tuple[HuffmanTable, HuffmanTable]] | None:
  """(DC table, AC table) of each block of one MCU, in scan order; None when the scan names
  a table or component the stream (or `extra`, the tables of a stripped stream) lacks."""
  found = {(t.table_class, t.table_id): t for t in (*extra, *header.huffman_tables)}
  comps = {c.id: c for c in header.components}
  blocks = []
  for comp_id, dc_id, ac_id in header.scan_components:
    dc, ac = found.get((0, dc_id)), found.get((1, ac_id))
    if dc is None or ac is None or comp_id not in comps:
      return None
    count = comps[comp_id].h * comps[comp_id].v if header.interleaved else 1
    blocks += [(dc, ac)] * count
  return blocks


def _interval_ok(segment: bytes, n_mcus: int, plan) -> bool:
  """True if `segment` (one restart interval, still byte-stuffed) decodes to exactly n MCUs."""
  buf = segment.replace(b"\xff\x00", b"\xff")
  nbits = len(buf) * 8
  buf += b"\xff\xff\xff"  # 1-bits past the end never form a valid code: overruns fail below
  pos = 0
  for _ in range(n_mcus):
    for dc_lut, ac_lut in plan:
      p = pos >> 3
      window = ((buf[p] << 16 | buf[p + 1] << 8 | buf[p + 2]) >> (8 - (pos & 7))) & 0xFFFF
      entry = dc_lut[window]
      if entry < 0 or (entry & 0xFF) > MAX_DC_SIZE:
        return False
      pos += (entry >> 8) + (entry & 0xFF)
      k = 1
      while k < BLOCK_END:
        p = pos >> 3
        window = ((buf[p] << 16 | buf[p + 1] << 8 | buf[p + 2]) >> (8 - (pos & 7))) & 0xFFFF
        entry = ac_lut[window]
        if entry < 0:
          return False
        k = NEXT_K[k][entry & 0xFF]
        if k < 0:
          return False
        pos += (entry >> 8) + (entry & 15)
      if pos > nbits:
        return False
  spare = nbits - pos
  if spare >= 8:
    return False
  mask = (1 << spare) - 1
  return spare == 0 or (buf[len(buf) - 4] & mask) == mask


def valid_mcus(data: bytes, header: JpegHeader, restart_offsets: tuple[int, ...], scan_end: int,
               extra_tables: tuple[HuffmanTable, ...] = ()) -> tuple[int, bool] | None:
  """(MCUs from the top that decode cleanly, whether every MCU does), or None if uncheckable.

  Uncheckable: progressive/lossless frames, a scan without its Huffman tables.
  """
  if header.sof_marker not in (0xC0, 0xC1):
    return None
  blocks = mcu_blocks(header, extra_tables)
  if blocks is None:
    return None
  plan = [(lookup_table(dc), lookup_table(ac)) for dc, ac in blocks]
  total = header.num_mcus
  interval = header.restart_interval or total
  bounds = [header.scan_start, *[o + 2 for o in restart_offsets]]
  ends = [*restart_offsets, scan_end]
  good_prefix, all_good, done = 0, True, 0
  for start, end in zip(bounds, ends):
    n = min(interval, total - done)
    if n <= 0:
      all_good = False  # more intervals than the image has MCUs
      break
    ok = _interval_ok(data[start:end], n, plan)
    if ok and good_prefix == done:
      good_prefix += n
    all_good = all_good and ok
    done += n
  if done < total:
    all_good = False
  return good_prefix, all_good
