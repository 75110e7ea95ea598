"""A slice's RBSP read one byte at a time: slice header, one macroblock, rbsp_slice_trailing_bits.

The parser position is a small hashable value `(state, node)`: the syntax state (a tuple from
`h264_slice_header` or `h264_macroblock`) and the node reached inside the element being read
(`h264_codes`). Inside slice data the position does not depend on where the slice stands in
the stream, so `step` is memoised per (position, byte): after warm-up a byte costs one lookup.
"""

from __future__ import annotations

from jpeglm.codecs import h264_codes as hc
from jpeglm.codecs import h264_macroblock as mb
from jpeglm.codecs import h264_residual as residual
from jpeglm.codecs import h264_slice_header as sh
from jpeglm.codecs.h264_params import ParameterSets

# States without an element to read: handled bit by bit (alignment) or byte by byte (I_PCM).
TRAIL_STOP, TRAIL_ZERO, SLICE_END, PCM_ALIGN, PCM_SAMPLES = range(50, 55)
_TRAIL_STOP, _TRAIL_ZERO, _SLICE_END, _PCM_ALIGN = ((t,) for t in range(50, 54))
MAX_MEMO = 2_000_000


class SliceSyntax:
  def __init__(self, ps: ParameterSets):
    self.codes = hc.Codes()
    self.header = sh.SliceHeader(self.codes, ps)
    self.macroblock = mb.Macroblock(self.codes, ps)
    self._roots: dict = {}
    self._memo: dict = {}
    self._tables: dict = {}
    self._subtrees: dict = {}

  def start(self, ctx: sh.HeaderContext) -> tuple:
    return self._position((sh.H_FIRST_MB, ctx))

  def _position(self, s) -> tuple:
    node = self._roots.get(s)
    if node is None:
      machine = self.header if s[0] < mb.MB_SKIP_RUN else self.macroblock
      node = self._roots[s] = machine.code(s)
    return (s, node)

  def step(self, position, byte: int):
    """(position after `byte`, header values or None, slice over) or None if invalid.
    Header values = (slice_type, idr_pic_id), given on the byte where the header ends."""
    table = self._tables.get(position)
    if table is not None:
      return table[byte]
    key = (position, byte)
    result = self._memo.get(key, self)
    if result is self:
      if len(self._memo) >= MAX_MEMO:
        self._memo.clear()
      result = self._memo[key] = self._read_byte(position, byte)
    return result

  def byte_table(self, position) -> tuple:
    """`step(position, b)` for every byte b at once, sharing the work of common bit prefixes
    (memoised per bit-level state and bits left in the byte: sub-trees recur across bytes)."""
    table = self._tables.get(position)
    if table is None:
      if len(self._tables) >= MAX_MEMO // 64:
        self._tables.clear()
      s, _ = position
      if s[0] == PCM_SAMPLES:
        table = (self._read_byte(position, 0),) * 256
      else:
        table = self._subtree(position, None, 8)
      self._tables[position] = table
    return table

  def _subtree(self, position, info, bits_left: int) -> tuple:
    """Outcomes (position, info, slice over) or None of the 2^bits_left ways to finish the
    byte."""
    key = (position, info, bits_left)
    out = self._subtrees.get(key)
    if out is None:
      if len(self._subtrees) >= MAX_MEMO:
        self._subtrees.clear()
      parts = []
      for bit in (0, 1):
        r = self._read_bit(position, bit, bits_left - 1)
        if r is None:
          parts.append((None,) * (1 << (bits_left - 1)))
        else:
          nxt, nxt_info = r
          nxt_info = info if nxt_info is None else nxt_info
          parts.append(((nxt, nxt_info, nxt[0] is _SLICE_END),) if bits_left == 1
                       else self._subtree(nxt, nxt_info, bits_left - 1))
      out = self._subtrees[key] = parts[0] + parts[1]
    return out

  def _read_byte(self, position, byte: int):
    s, node = position
    if s[0] == PCM_SAMPLES:  # byte aligned: one whole sample
      left = s[1] - 1
      return ((_TRAIL_STOP, 0) if left == 0 else ((PCM_SAMPLES, left), 0), None, False)
    info = None
    for shift in range(7, -1, -1):
      r = self._read_bit(position, (byte >> shift) & 1, shift)
      if r is None:
        return None
      position, bit_info = r
      if bit_info is not None:
        info = bit_info
    return (position, info, position[0] is _SLICE_END)

  def _read_bit(self, position, bit: int, shift: int):
    """(position after one bit, header values or None), or None if the bit is invalid;
    `shift` is how many bits of the byte follow this one (alignment needs it)."""
    s, node = position
    if node:
      codes = self.codes
      nxt = (codes.one if bit else codes.zero)[node]
      if nxt is None:
        nxt = codes.child(node, bit)
      if nxt > 0:
        return (s, nxt), None
      if nxt == hc.DEAD:
        return None
      machine = self.header if s[0] < mb.MB_SKIP_RUN else self.macroblock
      s = machine.after(s, codes.leaf_value(nxt))
      info = None
      if s[0] == sh.DATA_START:
        info, s = s[1], s[2]
      if s is residual.MB_DONE:
        return (_TRAIL_STOP, 0), info
      if s is mb.PCM:
        return ((_PCM_ALIGN, 0) if shift else ((PCM_SAMPLES, mb.PCM_BYTES), 0)), info
      return self._position(s), info
    tag = s[0]
    if tag == TRAIL_STOP:  # rbsp_stop_one_bit
      return (((_TRAIL_ZERO if shift else _SLICE_END), 0), None) if bit else None
    if tag == TRAIL_ZERO:  # rbsp_alignment_zero_bit
      return None if bit else (((_TRAIL_ZERO if shift else _SLICE_END), 0), None)
    if tag == PCM_ALIGN:  # pcm_alignment_zero_bit
      return None if bit else (((_PCM_ALIGN, 0) if shift else ((PCM_SAMPLES, mb.PCM_BYTES), 0)),
                               None)
    return None  # nothing follows the trailing bits
