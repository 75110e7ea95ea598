"""CAVLC residual data of one macroblock (ITU-T H.264 7.3.5.3, 9.2) as an explicit state machine.

A macroblock's blocks are listed once per (Intra16x16 or not, coded_block_pattern): the
Intra16x16 DC block, the luma 4x4 blocks of the coded 8x8 quadrants, chroma DC (Cb, Cr), then
chroma AC. Each block reads coeff_token, trailing-ones signs, levels (suffixLength rules),
total_zeros and run_before. nC comes from the left and upper 4x4 blocks *of this macroblock*:
with one macroblock per slice every neighbour in another macroblock is unavailable (6.4.11.4),
and a block skipped by coded_block_pattern counts as available with no coefficients.

States are tuples (tag, ctx, maxNumCoeff, ...) with ctx = (list id, block position, totals),
where totals keeps TotalCoeff only of the earlier blocks that later blocks still look at, so
equal futures share a state. Inside a block only the block's end reads ctx.
"""

from __future__ import annotations

from jpeglm.codecs import h264_codes as hc
from jpeglm.codecs import h264_vlc_tables as vlc

RES_COEFF_TOKEN, RES_SIGNS, RES_LEVEL, RES_TOTAL_ZEROS, RES_RUN = range(40, 45)
MB_DONE = (49,)  # the macroblock's syntax is over

_UNAVAILABLE, _EMPTY = -1, -2  # neighbour outside the macroblock / inside but not coded


def luma_xy(blk: int) -> tuple[int, int]:
  """Position (in 4x4 blocks) of luma4x4BlkIdx `blk` (6.4.3)."""
  return (blk // 4 % 2) * 2 + blk % 2, (blk // 8) * 2 + blk % 4 // 2


def _build_list(intra16: bool, cbp: int) -> tuple:
  """Blocks as (maxNumCoeff, left, top): left/top are list positions, _EMPTY or _UNAVAILABLE;
  chroma DC blocks have left = top = None (nC = -1)."""
  blocks = []
  if intra16:
    blocks.append((16, _UNAVAILABLE, _UNAVAILABLE))  # DC: nC of block 0, no neighbours
  luma_pos = {}
  for blk in range(16):
    if cbp >> (blk // 4) & 1:
      luma_pos[luma_xy(blk)] = len(blocks) + len(luma_pos)
  def neighbour(x, y):
    if x < 0 or y < 0:
      return _UNAVAILABLE
    return luma_pos.get((x, y), _EMPTY)
  for blk in range(16):
    x, y = luma_xy(blk)
    if (x, y) in luma_pos:
      blocks.append((15 if intra16 else 16, neighbour(x - 1, y), neighbour(x, y - 1)))
  chroma = cbp >> 4
  if chroma:
    blocks += [(4, None, None)] * 2
  if chroma == 2:
    for _ in range(2):  # Cb then Cr: 2x2 blocks of 4x4 each
      first = len(blocks)
      for b in range(4):
        left = first + b - 1 if b % 2 else _UNAVAILABLE
        top = first + b - 2 if b >= 2 else _UNAVAILABLE
        blocks.append((15, left, top))
  return tuple(blocks)


def _still_needed(blocks: tuple) -> tuple:
  """For each position p: the positions <= p that blocks after p still read, as a 0/1 mask
  over positions 0..p."""
  out = []
  for p in range(len(blocks)):
    refs = {r for _, left, top in blocks[p + 1:] for r in (left, top)
            if r is not None and 0 <= r <= p}
    out.append(tuple(int(q in refs) for q in range(p + 1)))
  return tuple(out)


BLOCK_LISTS = []
LIST_ID = {}
for _intra16 in (False, True):
  for _cbp in range(48):
    if _intra16 and _cbp & 15 not in (0, 15):
      continue
    LIST_ID[(_intra16, _cbp)] = len(BLOCK_LISTS)
    BLOCK_LISTS.append(_build_list(_intra16, _cbp))
_NEEDED = [_still_needed(b) for b in BLOCK_LISTS]


def start(intra16: bool, cbp: int):
  """First state of the residual, or MB_DONE if nothing is coded."""
  lid = LIST_ID[(intra16, cbp)]
  return block_start((lid, 0, ())) if BLOCK_LISTS[lid] else MB_DONE


def _nc(block, totals) -> int:
  _, left, top = block
  if left is None:
    return vlc.CHROMA_DC
  avail = [totals[r] if r >= 0 else 0 for r in (left, top) if r != _UNAVAILABLE]
  if len(avail) == 2:
    return (avail[0] + avail[1] + 1) >> 1
  return avail[0] if avail else 0


def block_start(ctx):
  """The coeff_token state of the block at `ctx` = (list id, block position, totals)."""
  lid, pos, totals = ctx
  block = BLOCK_LISTS[lid][pos]
  return (RES_COEFF_TOKEN, ctx, block[0], vlc.coeff_token_table(_nc(block, totals)))


def block_done(ctx, total: int):
  """The state after the block at `ctx` ends with `total` coefficients."""
  lid, pos, totals = ctx
  if pos + 1 == len(BLOCK_LISTS[lid]):
    return MB_DONE
  totals = tuple(map(int.__mul__, totals + (total,), _NEEDED[lid][pos]))
  return block_start((lid, pos + 1, totals))


BLOCK_END_TAG = 48  # (BLOCK_END_TAG, total): a block ended where its ctx was left out


class Residual:
  """code(state) -> root node of the element read there; after(state, value) -> next state.

  A state is (tag, ctx, maxNumCoeff, ...) with ctx = (list id, block position, totals): only
  the end of a block reads ctx, so a state with ctx None stands for every block alike (the
  reader memoises bits within a block that way) and its block end is `(BLOCK_END_TAG, total)`.
  """

  def __init__(self, codes: hc.Codes):
    self.codes = codes

  def code(self, s) -> int:
    tag = s[0]
    codes = self.codes
    if tag == RES_COEFF_TOKEN:
      key = ("coeff_token", s[3], s[2])
      return codes.root(key, lambda: hc.WordCode(vlc.coeff_token_words(key[1], key[2])))
    if tag == RES_SIGNS:
      ones = s[4]
      return codes.root(("signs", ones), lambda: hc.fixed_words(ones, range(1 << ones)))
    if tag == RES_LEVEL:
      length = s[5]
      return codes.root(("level", length), lambda: hc.LevelCode(length))
    if tag == RES_TOTAL_ZEROS:
      key = ("total_zeros", s[3], s[2])
      return codes.root(key, lambda: hc.WordCode(vlc.total_zeros_words(key[1], key[2])))
    zeros_left = s[5]
    return codes.root(("run_before", zeros_left),
                      lambda: hc.WordCode(vlc.run_before_words(zeros_left)))

  def after(self, s, value):
    tag, ctx, maxc = s[:3]
    if tag == RES_COEFF_TOKEN:
      total, ones = value
      if total == 0:
        return self._block_done(ctx, 0)
      if ones:
        return (RES_SIGNS, ctx, maxc, total, ones)
      return self._levels(ctx, maxc, total, 0)
    if tag == RES_SIGNS:
      return self._levels(ctx, maxc, s[3], s[4])
    if tag == RES_LEVEL:
      _, _, _, total, i, length, first = s
      code = value + 2 if first else value
      magnitude = (code + 2) >> 1  # |levelVal| (9.2.2.1), the same for both signs
      if length == 0:
        length = 1
      if magnitude > (3 << (length - 1)) and length < 6:
        length += 1
      if i + 1 < total:
        return (RES_LEVEL, ctx, maxc, total, i + 1, length, False)
      return self._after_levels(ctx, maxc, total)
    if tag == RES_TOTAL_ZEROS:
      return self._runs(ctx, maxc, s[3], s[3] - 1, value)
    _, _, _, total, runs_left, zeros_left = s
    return self._runs(ctx, maxc, total, runs_left - 1, zeros_left - value)

  def _levels(self, ctx, maxc, total, ones):
    if ones == total:
      return self._after_levels(ctx, maxc, total)
    length = 1 if total > 10 and ones < 3 else 0
    return (RES_LEVEL, ctx, maxc, total, ones, length, ones < 3)

  def _after_levels(self, ctx, maxc, total):
    if total < maxc:
      return (RES_TOTAL_ZEROS, ctx, maxc, total)
    return self._block_done(ctx, total)

  def _runs(self, ctx, maxc, total, runs_left, zeros_left):
    if runs_left and zeros_left:
      return (RES_RUN, ctx, maxc, total, runs_left, zeros_left)
    return self._block_done(ctx, total)

  @staticmethod
  def _block_done(ctx, total):
    return (BLOCK_END_TAG, total) if ctx is None else block_done(ctx, total)
