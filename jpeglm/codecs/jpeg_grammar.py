"""Which bytes may come next in a JPEG-LM stream: the grammar behind syntax-safe sampling.

A byte-level automaton for the codec's own streams: the fixed header (identical for every
image of one codec setting), then the baseline scan, tracked bit by bit through the Huffman
codes: each MCU's blocks (DC size <= 11, AC runs within 64 coefficients), 1-bit padding at
the end of each restart interval, 0xFF always stuffed with 0x00, RST0..RST7 in order after
each interval, and EOI exactly after the last MCU. Every stream it accepts to the end decodes
completely (`JpegCodec.decode(...).complete`); coefficient *values* are free bits.

Transitions within the scan do not depend on the MCU index, so they are memoised per
(local state, byte): after warm-up a byte costs one dict lookup.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from jpeglm.codecs import jpeg_stream
from jpeglm.codecs.errors import CodecError
from jpeglm.codecs.jpeg import JpegCodec

HEADER, SCAN, MARKER_FF, MARKER_CODE, STUFFED_ZERO, DONE = range(6)
_INVALID = None


class _Huffman:
  """Codes of one table as {(length, code): symbol}, and for every proper prefix what the
  codes below it can still do (so a prefix that only leads to invalid symbols is refused)."""

  def __init__(self, table: jpeg_stream.HuffmanTable):
    self.codes: dict[tuple[int, int], int] = {}
    below: dict[tuple[int, int], list[int]] = {}
    code, k = 0, 0
    for length in range(1, 17):
      for _ in range(table.counts[length - 1]):
        self.codes[(length, code)] = table.symbols[k]
        for n in range(1, length):
          below.setdefault((n, code >> (length - n)), []).append(table.symbols[k])
        code += 1
        k += 1
      code <<= 1
    # prefix -> the largest coefficient index k at which some code below it is still valid
    self.last_k: dict[tuple[int, int], int] = {
        prefix: max(_last_valid_k(s) for s in symbols) for prefix, symbols in below.items()}


def _last_valid_k(symbol: int) -> int:
  """Largest k (0 = DC, 1..63 = AC position) at which `symbol` may appear, for AC tables;
  DC symbols are checked separately (size <= 11)."""
  run, size = symbol >> 4, symbol & 15
  if size == 0:
    return 63 if run == 0 else (48 if run == 15 else -1)  # EOB anywhere; ZRL must fit 16
  return 63 - run


class JpegGrammar:
  """Valid continuations of streams made by `codec` (stripped tables or not)."""

  def __init__(self, codec: JpegCodec):
    # Any image gives the header: it depends only on the codec settings.
    stream = codec.encode(Image.new("RGB", (codec.size, codec.size)))
    header = codec.header(stream)
    if header.sof_marker not in jpeg_stream.BASELINE_SOF:
      raise CodecError("syntax-safe decoding needs baseline JPEG")
    self.header_bytes = stream[:header.scan_start]
    tables = header.huffman_tables or codec._table_segments  # stripped streams: the standard set
    found = {(t.table_class, t.table_id): _Huffman(t) for t in tables}
    comps = {c.id: c for c in header.components}
    self._blocks = []
    for comp_id, dc_id, ac_id in header.scan_components:
      count = comps[comp_id].h * comps[comp_id].v if header.interleaved else 1
      self._blocks += [(found[(0, dc_id)], found[(1, ac_id)])] * count
    if header.restart_interval != 1:
      raise CodecError("syntax-safe decoding needs a restart marker after every MCU "
                       "(codec.restart_every_mcu=True)")
    self.num_mcus = header.num_mcus
    self._memo: dict = {}

  # A state is (mode, position, local): position is the header offset or the MCUs finished;
  # local is (block, k, code, code_len, value_bits, padding) inside the scan.
  def start(self) -> tuple:
    return (HEADER, 0, None)

  def is_complete(self, state) -> bool:
    return state is not None and state[0] == DONE

  def advance(self, state, data: bytes):
    """The state after `data`, or None if `data` cannot continue a valid stream."""
    for byte in data:
      if state is None:
        return None
      state = self._step(state, byte)
    return state

  def allowed(self, state, pieces: Sequence[bytes]) -> np.ndarray:
    """Mask over tokens: which pieces (the bytes of each token id) keep the stream valid.
    Empty pieces (specials) are False; the caller decides about EOS at a complete state."""
    return np.array([bool(p) and self.advance(state, p) is not None for p in pieces], dtype=bool)

  # ---- the automaton ----------------------------------------------------------------------

  def _step(self, state, byte: int):
    mode, position, local = state
    if mode == HEADER:
      if byte != self.header_bytes[position]:
        return _INVALID
      position += 1
      if position < len(self.header_bytes):
        return (HEADER, position, None)
      return (SCAN, 0, (0, 0, 0, 0, 0, False))
    if mode == SCAN:
      key = (local, byte)
      result = self._memo.get(key, self)
      if result is self:
        result = self._memo[key] = self._scan_byte(local, byte)
      if result is _INVALID:
        return _INVALID
      local, mcus_done, interval_over = result
      position += mcus_done
      if mcus_done and position > self.num_mcus:
        return _INVALID
      if interval_over or position == self.num_mcus and mcus_done:
        nxt = (MARKER_FF, position, None)
      else:
        nxt = (SCAN, position, local)
      return (STUFFED_ZERO, position, nxt) if byte == 0xFF else nxt
    if mode == STUFFED_ZERO:
      return local if byte == 0x00 else _INVALID
    if mode == MARKER_FF:
      return (MARKER_CODE, position, None) if byte == 0xFF else _INVALID
    if mode == MARKER_CODE:
      if position == self.num_mcus:
        return (DONE, position, None) if byte == jpeg_stream.EOI else _INVALID
      expected = jpeg_stream.RST0 + (position - 1) % 8
      return (SCAN, position, (0, 0, 0, 0, 0, False)) if byte == expected else _INVALID
    return _INVALID  # nothing follows EOI

  def _scan_byte(self, local, byte: int):
    """Eight bits of entropy data: (new local state, MCUs finished, interval over) or None."""
    block, k, code, code_len, value_bits, padding = local
    mcus_done = 0
    for shift in range(7, -1, -1):
      bit = (byte >> shift) & 1
      if padding:
        if not bit:
          return _INVALID  # padding is all 1-bits
        continue
      if value_bits:
        value_bits -= 1
      else:
        code, code_len = (code << 1) | bit, code_len + 1
        dc, ac = self._blocks[block]
        table = dc if k == 0 else ac
        symbol = table.codes.get((code_len, code))
        if symbol is None:
          # k == 0 is a DC table: every prefix there leads to some size <= 11.
          if table.last_k.get((code_len, code), -1) < k:
            return _INVALID
          continue
        code = code_len = 0
        if k == 0:
          if symbol > 11:
            return _INVALID
          k, value_bits = 1, symbol
        else:
          run, size = symbol >> 4, symbol & 15
          if size == 0:
            if run == 15:
              k += 16
              if k > 64:
                return _INVALID
            elif run == 0:
              k = 64  # end of block
            else:
              return _INVALID
          else:
            k += run
            if k > 63:
              return _INVALID
            k, value_bits = k + 1, size
      if value_bits == 0 and k == 64:
        block, k = block + 1, 0
        if block == len(self._blocks):
          block = 0
          mcus_done += 1
          padding = True  # one MCU per restart interval: the rest of the byte is padding
    if mcus_done:
      return ((0, 0, 0, 0, 0, False), 1, True)
    return ((block, k, code, code_len, value_bits, False), 0, False)
