"""Which bytes may come next in an AVC-LM stream: the grammar behind H.264 syntax-safe sampling.

A byte-level automaton for the streams `AvcCodec` makes (baseline profile, CAVLC, one macroblock
per slice): the parameter sets, verbatim (they depend only on the codec settings), then for each
of `codec.num_frames` pictures one slice NAL unit per macroblock in raster order, each
`00 00 01` or `00 00 00 01` + nal_unit_header + slice RBSP (`h264_syntax`) with emulation
prevention (inside a NAL unit 00 00 is always followed by 03 or a byte above 03, and 00 00 03 by
a byte up to 03). A picture may start with a repeat of SPS + PPS, as x264 writes before IDR
pictures; the first picture is an IDR picture. The stream is complete right after the last
macroblock of the last picture.

Token masks: inside a slice, which pieces stay inside it and which end it depends only on the
parser position (not on which macroblock this is), so that part is memoised per position and
the pieces that run past the slice's end are finished from the following start code.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs import h264_params
from jpeglm.codecs import h264_slice_header as sh
from jpeglm.codecs.avc import AvcCodec
from jpeglm.codecs.byte_grammar import ByteGrammar
from jpeglm.codecs.errors import CodecError
from jpeglm.codecs.h264_syntax import UNREAD, SliceSyntax

VERBATIM, START_CODE, NAL_HEADER, SLICE, DONE = range(5)
_DONE = (DONE,)
_IDR_HEADERS = (0x25, 0x45, 0x65)  # nal_ref_idc 1..3, nal_unit_type 5
_NON_IDR_HEADERS = (0x21, 0x41, 0x61)  # nal_ref_idc 1..3, nal_unit_type 1
MAX_MASKS = 100_000


class _PieceTrie:
  """The tokenizer's pieces as a byte trie: `children[node]` {byte: node}, `ends[node]` the
  piece ids that end there."""

  def __init__(self, pieces: Sequence[bytes]):
    self.children: list[dict] = [{}]
    self.ends: list[list] = [[]]
    for i, piece in enumerate(pieces):
      if not piece:
        continue
      node = 0
      for byte in piece:
        nxt = self.children[node].get(byte)
        if nxt is None:
          nxt = self.children[node][byte] = len(self.children)
          self.children.append({})
          self.ends.append([])
        node = nxt
      self.ends[node].append(i)


class AvcGrammar(ByteGrammar):
  """Valid continuations of H.264 streams made by `codec`."""
  DONE = DONE

  def __init__(self, codec: AvcCodec):
    if codec.slice_max_mbs != 1:
      raise CodecError("syntax-safe H.264 sampling needs one macroblock per slice "
                       "(slice_max_mbs=1)")
    # Any picture gives the parameter sets: they depend only on the codec settings.
    stream = codec.encode_frames([Image.new("RGB", (codec.width, codec.height))])
    nals = h264.split_nals(stream)
    kinds = [n.kind(stream) for n in nals]
    if h264.NAL_SPS not in kinds or h264.NAL_PPS not in kinds or h264.NAL_IDR not in kinds:
      raise CodecError("the codec's stream lacks SPS, PPS or an IDR slice")
    sps, pps = nals[kinds.index(h264.NAL_SPS)], nals[kinds.index(h264.NAL_PPS)]
    self.ps = h264_params.parse(stream[sps.payload_start:sps.end],
                                stream[pps.payload_start:pps.end])
    self.ps.check_supported()
    if self.ps.mbs_per_frame != codec.mbs_per_frame:
      raise CodecError("the SPS picture size differs from the codec's")
    self.header_bytes = stream[:nals[kinds.index(h264.NAL_IDR)].start]
    self.repeated_ps = stream[sps.start:pps.end]  # x264 repeats SPS + PPS before IDR pictures
    self._repeat_from = sps.payload_start - sps.start + 1  # just after the SPS header byte
    self.num_frames = codec.num_frames
    self.mbs_per_frame = self.ps.mbs_per_frame
    self.syntax = SliceSyntax(self.ps)
    self._tables = self.syntax.tables  # its byte steps per local position, read in `step`
    self._escapable: dict = {}
    self._trie, self._trie_of = None, None
    self._masks: dict = {}
    self._local: dict = {}

  # A state is one of
  #   (VERBATIM, which, offset, G): inside the parameter sets (0: stream start, 1: a repeat)
  #   (START_CODE, zeros, G, may_repeat_ps)
  #   (NAL_HEADER, G, may_repeat_ps)
  #   (SLICE, G, position, zeros, after_escape): position in the slice RBSP (h264_syntax)
  #   (DONE,)
  # G = (frame, mb, picture, dpb): picture = (nal header byte, first slice_type, idr_pic_id)
  # once known; dpb = (reference frames held, frame_num of the last, idr_pic_id of the last
  # picture if it was an IDR picture else -1).
  def start(self) -> tuple:
    return (VERBATIM, 0, 0, (0, 0, None, (0, 0, -1)))


  # ---- the automaton ----------------------------------------------------------------------

  def step(self, state, byte: int):
    mode = state[0]
    if mode == SLICE:
      _, g, position, zeros, escaped = state
      if zeros < 2 and not escaped:  # most bytes: a memoised step inside the slice
        table = self._tables.get(position[1])
        if table is not None:
          r = table[byte]
          if r is not None and r is not UNREAD and r[0] is not None and r[1] is None and (
              not r[2]):
            return (SLICE, g, (position[0], r[0]), zeros + 1 if byte == 0 else 0, False)
      result = self._slice_byte(position, zeros, escaped, byte)
      if result is None:
        return None
      position, zeros, escaped, info, ended = result
      if info is not None and g[1] == 0:
        g = (g[0], 0, (g[2][0], *info), g[3])
      if ended:
        return self._after_slice(g)
      return (SLICE, g, position, zeros, escaped)
    if mode == START_CODE:
      _, zeros, g, may_repeat = state
      if byte == 0:
        return (START_CODE, zeros + 1, g, may_repeat) if zeros < 3 else None
      if byte == 1 and zeros >= 2:
        return (NAL_HEADER, g, may_repeat)
      return None
    if mode == NAL_HEADER:
      return self._nal_header(state[1], state[2], byte)
    if mode == VERBATIM:
      _, which, offset, g = state
      expected = self.header_bytes if which == 0 else self.repeated_ps
      if byte != expected[offset]:
        return None
      if offset + 1 < len(expected):
        return (VERBATIM, which, offset + 1, g)
      return (START_CODE, 0, g, False)
    return None  # nothing follows the last macroblock

  def _slice_byte(self, position, zeros: int, escaped: bool, byte: int):
    """Emulation prevention, then the RBSP parser: (position, zeros, escaped, info, ended)."""
    if escaped:
      if byte > 3:
        return None  # 00 00 03 is followed by 00..03
    elif zeros == 2:
      if byte == 3:  # emulation_prevention_three_byte: only if some RBSP byte 00..03 fits
        return (position, 0, True, None, False) if self._escapable_at(position) else None
      if byte < 3:
        return None
    result = self.syntax.step(position, byte)
    if result is None:
      return None
    position, info, ended = result
    return (position, zeros + 1 if byte == 0 else 0, False, info, ended)

  def _nal_header(self, g, may_repeat: bool, byte: int):
    frame, mb, picture, dpb = g
    if mb == 0:
      if byte == self.repeated_ps[self._repeat_from - 1] and may_repeat and frame > 0:
        return (VERBATIM, 1, self._repeat_from, g)
      if byte not in _IDR_HEADERS and (frame == 0 or byte not in _NON_IDR_HEADERS):
        return None
      picture = (byte, None, -1)
    elif byte != picture[0]:
      return None  # every slice of a picture has the same nal_unit_type and nal_ref_idc
    idr = byte & 0x1F == h264.NAL_IDR
    refs, last_frame_num, last_idr_pic_id = dpb
    ctx = sh.HeaderContext(
        mb=mb, idr=idr, slice_types=sh.slice_types_allowed(idr, picture[1]),
        frame_num=0 if idr else (last_frame_num + 1) % self.ps.max_frame_num,
        idr_pic_id=picture[2], previous_idr_pic_id=last_idr_pic_id, refs=refs)
    return (SLICE, (frame, mb, picture, dpb), self.syntax.start(ctx), 0, False)

  def _after_slice(self, g):
    frame, mb, picture, dpb = g
    if mb + 1 < self.mbs_per_frame:
      return (START_CODE, 0, (frame, mb + 1, picture, dpb), False)
    if frame + 1 == self.num_frames:
      return _DONE
    refs, last_frame_num, _ = dpb
    if picture[0] & 0x1F == h264.NAL_IDR:
      dpb = (1, 0, picture[2])
    else:  # sliding window over max_num_ref_frames
      dpb = (min(refs + 1, self.ps.max_num_ref_frames),
             (last_frame_num + 1) % self.ps.max_frame_num, -1)
    return (START_CODE, 0, (frame + 1, 0, None, dpb), True)

  # ---- token masks ------------------------------------------------------------------------

  def allowed(self, state, pieces: Sequence[bytes]) -> np.ndarray:
    """Mask over tokens: which pieces (the bytes of each token id) keep the stream valid.
    Empty pieces (specials) are False; the caller decides about EOS at a complete state.
    The mask may be shared between calls: read it, do not write to it."""
    if pieces is not self._trie_of:
      self._trie, self._trie_of = _PieceTrie(pieces), pieces
      self._masks, self._local = {}, {}
      self._size = len(pieces)
    if state[0] == SLICE:
      return self._slice_mask(state)
    return self._mask_from(state, 0)

  def _mask_from(self, state, node: int) -> np.ndarray:
    """Pieces below trie `node` whose remaining bytes continue `state`, memoised."""
    key = (state, node)
    mask = self._masks.get(key)
    if mask is None:
      if len(self._masks) >= MAX_MASKS:
        self._masks.clear()
      trie = self._trie
      mask = np.zeros(self._size, dtype=bool)
      stack = [(node, state)]
      while stack:
        at, s = stack.pop()
        for byte, child in trie.children[at].items():
          nxt = self.step(s, byte)
          if nxt is not None:
            mask[trie.ends[child]] = True
            stack.append((child, nxt))
      self._masks[key] = mask
    return mask

  def _slice_mask(self, state) -> np.ndarray:
    _, g, position, zeros, escaped = state
    inside, leaving = self._local_outcome((position, zeros, escaped))
    if not leaving:
      return inside
    mask = inside.copy()
    for node, info in leaving:
      after = g
      if info is not None and g[1] == 0:
        after = (g[0], 0, (g[2][0], *info), g[3])
      rest = self._after_slice(after)
      mask[self._trie.ends[node]] = True  # the piece ends with the slice
      if self._trie.children[node]:
        mask |= self._mask_from(rest, node)
    return mask

  def _local_outcome(self, key):
    """(pieces that stay inside this slice, [(trie node, header info)] where a piece path
    ends the slice) from a position in a slice; independent of the slice's place."""
    outcome = self._local.get(key)
    if outcome is None:
      if len(self._local) >= MAX_MASKS:
        self._local.clear()
      outcome = self._local[key] = self._walk(*key)
    return outcome

  def _walk(self, position, zeros: int, escaped: bool):
    """`_local_outcome` worked out: the piece trie walked from `position`, with `_slice_byte`
    inlined (this loop is the cost of a mask)."""
    children, ends = self._trie.children, self._trie.ends
    syntax = self.syntax
    tables, local_table, read, go_on = (syntax.tables, syntax.local_table, syntax.read_byte,
                                        syntax.go_on)
    kept, leaving = [], []
    stack = [(0, position, zeros, escaped, None)]
    while stack:
      at, position, zeros, escaped, info = stack.pop()
      ctx, local = position
      table = tables.get(local)
      if table is None:
        table = local_table(local)
      for byte, child in children[at].items():
        if escaped:
          if byte > 3:
            continue
        elif zeros == 2:
          if byte == 3:  # emulation_prevention_three_byte
            if self._escapable_at(position):
              kept.extend(ends[child])
              if children[child]:
                stack.append((child, position, 0, True, info))
            continue
          if byte < 3:
            continue
        r = table[byte]
        if r is UNREAD:
          r = read(table, local, byte)
        if r is None:
          continue
        if r[0] is not None:
          nxt, nxt_info, ended = (ctx, r[0]), r[1], r[2]
        else:
          r = go_on(ctx, r, byte)
          if r is None:
            continue
          nxt, nxt_info, ended = r
        if nxt_info is None:
          nxt_info = info
        if ended:
          leaving.append((child, nxt_info))
          continue
        kept.extend(ends[child])
        if children[child]:
          stack.append((child, nxt, zeros + 1 if byte == 0 else 0, False, nxt_info))
    inside = np.zeros(self._size, dtype=bool)
    inside[kept] = True
    return inside, leaving

  def _escapable_at(self, position) -> bool:
    """Whether 00 00 03 may come here: some RBSP byte 00..03 must follow it."""
    ok = self._escapable.get(position)
    if ok is None:
      if len(self._escapable) >= MAX_MASKS:
        self._escapable.clear()
      ok = self._escapable[position] = any(self.syntax.step(position, b) is not None
                                           for b in range(4))
    return ok
