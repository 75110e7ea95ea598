"""Which bytes may come next in a JPEG-LM stream: the grammar behind syntax-safe sampling.

A byte-level automaton for the codec's own streams: the fixed header (identical for every
image of one codec setting), then the baseline scan, tracked bit by bit through the Huffman
codes: each MCU's blocks (DC size <= 11, AC runs within 64 coefficients), 1-bit padding at
the end of each restart interval, 0xFF always stuffed with 0x00, RST0..RST7 in order after
each interval, and EOI exactly after the last MCU. Every stream it accepts to the end decodes
completely (`JpegCodec.decode(...).complete`); coefficient *values* are free bits.

Transitions within the scan do not depend on the MCU index, so they are memoised per
(local state, byte): after warm-up a byte costs one dict lookup. Token masks are memoised
too, per local state and the little of the position a token can reach (`_mask_key`).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from jpeglm.codecs import jpeg_huffman, jpeg_stream
from jpeglm.codecs.byte_grammar import ByteGrammar
from jpeglm.codecs.errors import CodecError
from jpeglm.codecs.jpeg import JpegCodec
from jpeglm.codecs.jpeg_huffman import BLOCK_END, LAST_K, MAX_DC_SIZE, NEXT_K

HEADER, SCAN, MARKER_FF, MARKER_CODE, STUFFED_ZERO, DONE = range(6)
_INVALID = None
MAX_MASKS = 200_000  # memoised token masks (~0.4 KB each at vocabulary 320)


class _Huffman:
  """Codes of one table as {(length, code): symbol}, and for every proper prefix what the
  codes below it can still do (so a prefix that only leads to invalid symbols is refused)."""

  def __init__(self, table: jpeg_stream.HuffmanTable):
    self.codes: dict[tuple[int, int], int] = {}
    below: dict[tuple[int, int], list[int]] = {}
    for length, code, symbol in jpeg_huffman.canonical_codes(table):
      self.codes[(length, code)] = symbol
      for n in range(1, length):
        below.setdefault((n, code >> (length - n)), []).append(symbol)
    # prefix -> the largest AC coefficient index k at which some code below it is valid
    # (DC tables need no such check: every DC prefix leads to some size <= 11)
    self.last_k: dict[tuple[int, int], int] = {
        prefix: max(LAST_K[s] for s in symbols) for prefix, symbols in below.items()}


class JpegGrammar(ByteGrammar):
  """Valid continuations of streams made by `codec` (stripped tables or not)."""
  DONE = DONE

  def __init__(self, codec: JpegCodec):
    # Any image gives the header: it depends only on the codec settings.
    stream = codec.encode(Image.new("RGB", (codec.size, codec.size)))
    header = codec.header(stream)
    if header.sof_marker not in jpeg_stream.BASELINE_SOF:
      raise CodecError("syntax-safe decoding needs baseline JPEG")
    self.header_bytes = stream[:header.scan_start]
    blocks = jpeg_huffman.mcu_blocks(header, codec.huffman_tables)
    if blocks is None:
      raise CodecError("the codec's header names Huffman tables it does not have")
    coded = {t: _Huffman(t) for t in {t for block in blocks for t in block}}
    self._blocks = [(coded[dc], coded[ac]) for dc, ac in blocks]
    if header.restart_interval != 1:
      raise CodecError("syntax-safe decoding needs a restart marker after every MCU "
                       "(codec.restart_every_mcu=True)")
    self.num_mcus = header.num_mcus
    self._memo: dict = {}
    self._mask_pieces, self._masks, self._reach = None, {}, 0

  # A state is (mode, position, local): position is the header offset or the MCUs finished;
  # local is (block, k, code, code_len, value_bits, padding) inside the scan.
  def start(self) -> tuple:
    return (HEADER, 0, None)


  def allowed(self, state, pieces: Sequence[bytes]) -> np.ndarray:
    """Mask over tokens: which pieces (the bytes of each token id) keep the stream valid.
    Empty pieces (specials) are False; the caller decides about EOS at a complete state.
    The mask is shared between calls: read it, do not write to it."""
    if pieces is not self._mask_pieces:
      self._mask_pieces, self._masks = pieces, {}
      self._reach = max(len(p) for p in pieces) + 1
    key = self._mask_key(state)
    mask = self._masks.get(key)
    if mask is None:
      if len(self._masks) >= MAX_MASKS:
        self._masks.clear()
      mask = self._masks[key] = np.array(
          [bool(p) and self.advance(state, p) is not None for p in pieces], dtype=bool)
    return mask

  def _mask_key(self, state):
    """What the mask at `state` depends on: within one token (a few bytes, at most one MCU
    each) the position matters only through the RSTn due next (position mod 8) and whether
    the last MCU is within reach; so states MCUs apart share a mask."""
    mode, position, local = state
    if mode in (HEADER, DONE):
      return state
    if mode == STUFFED_ZERO:
      local = (local[0], local[2])  # the state after the stuffed zero, at the same position
    return mode, position % 8, min(self.num_mcus - position, self._reach), local

  # ---- the automaton ----------------------------------------------------------------------

  def step(self, state, byte: int):
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
          if symbol > MAX_DC_SIZE:
            return _INVALID
          k, value_bits = 1, symbol
        else:
          k, value_bits = NEXT_K[k][symbol], symbol & 15
          if k < 0:
            return _INVALID
      if value_bits == 0 and k == BLOCK_END:
        block, k = block + 1, 0
        if block == len(self._blocks):
          block = 0
          mcus_done += 1
          padding = True  # one MCU per restart interval: the rest of the byte is padding
    if mcus_done:
      return ((0, 0, 0, 0, 0, False), 1, True)
    return ((block, k, code, code_len, value_bits, False), 0, False)
