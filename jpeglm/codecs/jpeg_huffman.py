"""Checking a baseline scan's Huffman-coded data, one restart interval at a time.

libjpeg decodes damaged data silently (it warns and fills garbage), so "does it decode" is
answered here instead: each interval must hold exactly its MCUs' worth of valid codes,
padded with 1-bits to the byte. This is the JPEG spec's decoding procedure (ITU T.81 F.2.2)
without the inverse DCT: sizes and run lengths only, no coefficient values.
"""

from __future__ import annotations

import functools

from jpeglm.codecs.jpeg_stream import HuffmanTable, JpegHeader

_PEEK_BITS = 16
_INVALID = -1


@functools.lru_cache(maxsize=64)
def lookup_table(counts: tuple[int, ...], symbols: bytes) -> tuple[int, ...]:
  """Maps every 16-bit window to (code length << 8 | symbol), or -1 where no code starts."""
  lut = [_INVALID] * (1 << _PEEK_BITS)
  code, k = 0, 0
  for length in range(1, 17):
    for _ in range(counts[length - 1]):
      span = 1 << (_PEEK_BITS - length)
      start = code << (_PEEK_BITS - length)
      lut[start:start + span] = [(length << 8) | symbols[k]] * span
      code += 1
      k += 1
    code <<= 1
  return tuple(lut)


def _tables(header: JpegHeader, extra: tuple[HuffmanTable, ...]):
  found = {(t.table_class, t.table_id): t for t in (*extra, *header.huffman_tables)}
  plan = []
  comps = {c.id: c for c in header.components}
  for comp_id, dc_id, ac_id in header.scan_components:
    dc, ac = found.get((0, dc_id)), found.get((1, ac_id))
    if dc is None or ac is None or comp_id not in comps:
      return None
    blocks = comps[comp_id].h * comps[comp_id].v if header.interleaved else 1
    dc_lut = lookup_table(dc.counts, dc.symbols)
    ac_lut = lookup_table(ac.counts, ac.symbols)
    plan.extend([(dc_lut, ac_lut)] * blocks)
  return plan


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
      if entry < 0 or (entry & 0xFF) > 11:
        return False
      pos += (entry >> 8) + (entry & 0xFF)
      k = 1
      while k < 64:
        p = pos >> 3
        window = ((buf[p] << 16 | buf[p + 1] << 8 | buf[p + 2]) >> (8 - (pos & 7))) & 0xFFFF
        entry = ac_lut[window]
        if entry < 0:
          return False
        run, size = (entry >> 4) & 15, entry & 15
        pos += entry >> 8
        if size == 0:
          if run != 15:
            break  # end of block
          k += 16
          continue
        k += run
        if k > 63:
          return False
        pos += size
        k += 1
      if k > 64:
        return False
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
  plan = _tables(header, extra_tables)
  if plan is None:
    return None
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
