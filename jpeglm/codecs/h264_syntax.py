"""A slice's RBSP read one byte at a time: slice header, one macroblock, rbsp_slice_trailing_bits.

The parser position is a small hashable value `(ctx, (state, node))`: the syntax state (a
tuple from `h264_slice_header`, `h264_macroblock` or `h264_residual`) and the node reached
inside the element being read (`h264_codes`), with the context of a residual block (which block
it is, and the coefficient counts of the blocks before) kept apart as `ctx`. Inside slice data
the position does not depend on where the slice stands in the stream, and inside a residual
block not on which block it is, so `step` is memoised per (state, node, byte) without `ctx`.
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
_RESIDUAL_FIRST, _RESIDUAL_LAST = residual.RES_COEFF_TOKEN, residual.RES_RUN
_EXIT = (55,)  # in place of a state: the reading needs a residual block's ctx to go on
UNREAD = (56,)  # in `tables`: a byte step not worked out yet
MAX_MEMO = 2_000_000


class SliceSyntax:
  """Positions are (ctx, local): `local` = (state, node) with a residual block's context left
  out of the state, `ctx` that context (`h264_residual`) or None outside residual blocks. Byte
  steps are memoised per local position, so a byte read inside a block is worked out once for
  all blocks, macroblocks and pictures alike; where a block ends, the next block's state comes
  from a memo per (ctx, TotalCoeff) and the rest of the byte from a memo per local position."""

  def __init__(self, ps: ParameterSets):
    self.codes = hc.Codes()
    self.header = sh.SliceHeader(self.codes, ps)
    self.macroblock = mb.Macroblock(self.codes, ps)
    self._roots: dict = {}
    self.tables: dict = {}  # local position -> its 256 byte steps, UNREAD until needed
    self._partial: dict = {}  # (local position, bits, how many) -> their step
    self._in_code: dict = {}  # (code node, bits, how many) -> (bits left, node reached)
    self._blocks: dict = {}  # (ctx, total) -> position of the next block

  def start(self, ctx: sh.HeaderContext) -> tuple:
    return (None, self._position((sh.H_FIRST_MB, ctx)))

  def _position(self, s) -> tuple:
    node = self._roots.get(s)
    if node is None:
      if len(self._roots) >= MAX_MEMO:
        self._roots.clear()
      machine = self.header if s[0] < mb.MB_SKIP_RUN else self.macroblock
      node = self._roots[s] = machine.code(s)
    return (s, node)

  def step(self, position, byte: int):
    """(position after `byte`, header values or None, slice over) or None if invalid.
    Header values = (slice_type, idr_pic_id), given on the byte where the header ends."""
    ctx, local = position
    table = self.tables.get(local)
    if table is None:
      table = self.local_table(local)
    r = table[byte]
    if r is UNREAD:
      r = self.read_byte(table, local, byte)
    if r is None:
      return None
    if r[0] is not None:
      return (ctx, r[0]), r[1], r[2]
    return self.go_on(ctx, r, byte)

  def read_byte(self, table: list, local, byte: int):
    """`table[byte]` of `local_table(local)` worked out: None, (local position, header values,
    slice over) or (None, ...) for `go_on` to finish with the block's ctx."""
    r = table[byte] = self._read_bits(local, byte, 8)
    return r

  def local_table(self, local) -> list:
    """The byte steps of a local position (`tables[local]`), read when first needed."""
    if len(self.tables) >= MAX_MEMO // 256:
      self.tables.clear()
    s = local[0]
    if s[0] == PCM_SAMPLES:  # byte aligned: one whole sample
      left = s[1] - 1
      table = [((_TRAIL_STOP, 0) if left == 0 else ((PCM_SAMPLES, left), 0), None, False)] * 256
    else:
      table = [UNREAD] * 256
    self.tables[local] = table
    return table

  def go_on(self, ctx, r, bits: int):
    """`step` for byte `bits`, whose local reading stopped at `r` = (None, state, bits left,
    info): the end of a residual block (state (BLOCK_END_TAG, total)) or the first block of a
    residual (state with its ctx)."""
    _, s, left, info = r
    while True:
      if s[0] == residual.BLOCK_END_TAG:
        key = (ctx, s[1])
        nxt = self._blocks.get(key)
        if nxt is None:
          if len(self._blocks) >= MAX_MEMO:
            self._blocks.clear()
          nxt = self._blocks[key] = self._split(residual.block_done(ctx, s[1]))
        ctx, local = nxt
      else:
        ctx, local = self._split(s)
      if left == 0:
        return (ctx, local), info, False
      bits &= (1 << left) - 1
      r = self._rest(local, bits, left, None)
      if r is None:
        return None
      if r[0] is not None:
        return (ctx, r[0]), r[1] if r[1] is not None else info, r[2]
      _, s, left, r_info = r
      info = r_info if r_info is not None else info

  def _split(self, s) -> tuple:
    """(ctx, local position) of a state."""
    if s is residual.MB_DONE:
      return None, (_TRAIL_STOP, 0)
    local = (s[0], None) + s[2:]
    return s[1], (local, self.macroblock.code(local))

  def _read_bits(self, local, bits: int, n: int):
    """The last `n` bits of a byte, `bits` their value, from a local position: None if invalid,
    (local position, header values or None, slice over), or (None, state, bits left, header
    values or None) where a residual block ends or begins (its ctx is needed to go on). The
    element at hand is read here (per code node, whatever the state), the rest memoised per
    (local position, bits, n), so that bytes with a common prefix share its reading."""
    s, node = local
    if node:
      key = (node, bits, n)
      walked = self._in_code.get(key)
      if walked is None:
        if len(self._in_code) >= MAX_MEMO:
          self._in_code.clear()
        walked = self._in_code[key] = self._walk_code(node, bits, n)
      shift, nxt = walked
      if nxt > 0:
        return ((s, nxt), None, False)
      if nxt == hc.DEAD:
        return None
      r = self._after_leaf(s, nxt, shift)
    else:
      shift = n - 1
      r = self._read_bit(local, (bits >> shift) & 1, shift)
      if r is None:
        return None
    local, info = r
    if local[0] is _EXIT:
      return (None, local[1], shift, info)
    if shift == 0:
      return (local, info, local[0] is _SLICE_END)
    return self._rest(local, bits & ((1 << shift) - 1), shift, info)

  def _walk_code(self, node: int, bits: int, n: int) -> tuple:
    """(bits left, node reached) reading up to `n` bits in the code tree from `node`: a node
    > 0 after all n bits, else the leaf or DEAD where the reading stopped."""
    codes = self.codes
    for shift in range(n - 1, -1, -1):
      node = codes.child(node, (bits >> shift) & 1)
      if node <= 0:
        return shift, node
    return 0, node

  def _rest(self, local, bits: int, n: int, info):
    """`_read_bits(local, bits, n)`, memoised, with `info` read before it."""
    key = (local, bits, n)
    r = self._partial.get(key, self)
    if r is self:
      if len(self._partial) >= MAX_MEMO:
        self._partial.clear()
      r = self._partial[key] = self._read_bits(local, bits, n)
    if r is None or info is None:
      return r
    if r[0] is not None:
      return r if r[1] is not None else (r[0], info, r[2])
    return r if r[3] is not None else (None, r[1], r[2], info)

  def _after_leaf(self, s, leaf: int, shift: int):
    """(position after the element read in state `s` ends at code leaf `leaf`, header values
    or None), `shift` bits of the byte still to come."""
    machine = self.header if s[0] < mb.MB_SKIP_RUN else self.macroblock
    s = machine.after(s, self.codes.leaf_value(leaf))
    info = None
    if s[0] == sh.DATA_START:
      info, s = s[1], s[2]
    if s is residual.MB_DONE:
      return (_TRAIL_STOP, 0), info
    if s[0] == residual.BLOCK_END_TAG or (_RESIDUAL_FIRST <= s[0] <= _RESIDUAL_LAST
                                          and s[1] is not None):
      return (_EXIT, s), info
    if s is mb.PCM:
      return ((_PCM_ALIGN, 0) if shift else ((PCM_SAMPLES, mb.PCM_BYTES), 0)), info
    return self._position(s), info

  def _read_bit(self, position, bit: int, shift: int):
    """(position after one bit, header values or None), or None if the bit is invalid, in a
    state without an element to read (node 0); `shift` is how many bits of the byte follow
    this one (alignment needs it)."""
    tag = position[0][0]
    if tag == TRAIL_STOP:  # rbsp_stop_one_bit
      return (((_TRAIL_ZERO if shift else _SLICE_END), 0), None) if bit else None
    if tag == TRAIL_ZERO:  # rbsp_alignment_zero_bit
      return None if bit else (((_TRAIL_ZERO if shift else _SLICE_END), 0), None)
    if tag == PCM_ALIGN:  # pcm_alignment_zero_bit
      return None if bit else (((_PCM_ALIGN, 0) if shift else ((PCM_SAMPLES, mb.PCM_BYTES), 0)),
                               None)
    return None  # nothing follows the trailing bits
