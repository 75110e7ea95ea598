"""slice_header() of I and P slices (ITU-T H.264 7.3.3, 7.4.3) under the codec's SPS/PPS.

What a header may say depends on where it stands, given as `HeaderContext`: first_mb_in_slice
is the macroblock due next; frame_num is 0 in IDR pictures and one more than the previous
(reference) picture's otherwise (no gaps); all slices of a picture repeat the first slice's
slice_type rule and idr_pic_id (which differs from the previous IDR's if that one came just
before); P slices may make active at most as many references as the decoded picture buffer holds
(FFmpeg: "Missing reference picture"), and ref_pic_list_modification may only name those.
Kept as x264 writes them: every picture is a reference picture marked by the sliding window
(no_output_of_prior_pics, long_term_reference and adaptive marking flags are 0).
"""

from __future__ import annotations

import dataclasses
import functools

from jpeglm.codecs import h264_codes as hc
from jpeglm.codecs import h264_macroblock as mb
from jpeglm.codecs.h264_params import ParameterSets

(H_FIRST_MB, H_SLICE_TYPE, H_PPS_ID, H_FRAME_NUM, H_IDR_PIC_ID, H_OVERRIDE, H_NUM_REFS,
 H_MOD_FLAG, H_MOD_IDC, H_MOD_DIFF, H_MARKING, H_QP_DELTA, H_DEBLOCK_IDC, H_ALPHA,
 H_BETA) = range(1, 16)
DATA_START = 19  # (DATA_START, (slice_type, idr_pic_id), first slice_data state)

P_TYPES, I_TYPES = (0, 5), (2, 7)
MAX_IDR_PIC_ID = 65535


@dataclasses.dataclass(frozen=True)
class HeaderContext:
  mb: int  # first_mb_in_slice
  idr: bool  # nal_unit_type 5
  slice_types: tuple[int, ...]  # the slice_type values allowed
  frame_num: int
  idr_pic_id: int  # the value to repeat, or -1: choose one
  previous_idr_pic_id: int  # -1 unless the previous picture was an IDR picture
  refs: int  # reference frames in the decoded picture buffer


def slice_types_allowed(idr: bool, first_slice_type: int | None) -> tuple[int, ...]:
  """slice_type values 5..9 promise that every slice of the picture has that type."""
  if first_slice_type is None:
    return I_TYPES if idr else P_TYPES + I_TYPES
  if first_slice_type >= 5:
    return (first_slice_type,)
  return (2,) if idr else (0, 2)


@functools.lru_cache(maxsize=4096)
def _without_mb(ctx: HeaderContext) -> HeaderContext:
  return dataclasses.replace(ctx, mb=-1)


class SliceHeader:
  def __init__(self, codes: hc.Codes, ps: ParameterSets):
    self.codes, self.ps = codes, ps

  def code(self, s) -> int:
    tag, ctx = s[0], s[1]
    root, ps = self.codes.root, self.ps
    if tag == H_FIRST_MB:
      return root(("ue", ctx.mb, ctx.mb), lambda: hc.GolombCode(hc.ue_range(ctx.mb, ctx.mb)))
    if tag == H_SLICE_TYPE:
      return root(("slice_type", ctx.slice_types),
                  lambda: hc.GolombCode(hc.ue_values(ctx.slice_types)))
    if tag == H_PPS_ID:
      return root(("ue", ps.pps_id, ps.pps_id),
                  lambda: hc.GolombCode(hc.ue_range(ps.pps_id, ps.pps_id)))
    if tag == H_FRAME_NUM:
      n, value = ps.log2_max_frame_num, ctx.frame_num
      return root(("u", n, value), lambda: hc.fixed_words(n, [value]))
    if tag == H_IDR_PIC_ID:
      if ctx.idr_pic_id >= 0:
        v = ctx.idr_pic_id
        return root(("ue", v, v), lambda: hc.GolombCode(hc.ue_range(v, v)))
      ex = ctx.previous_idr_pic_id
      return root(("idr_pic_id", ex), lambda: hc.GolombCode(
          hc.ue_range(0, MAX_IDR_PIC_ID, exclude=ex if ex >= 0 else None)))
    if tag == H_OVERRIDE:  # keeping the PPS default is allowed if the buffer holds that many
      values = (0, 1) if ps.num_ref_idx_default <= ctx.refs else (1,)
      return root(("u1", *values), lambda: hc.fixed_words(1, values))
    if tag == H_NUM_REFS:
      top = ctx.refs - 1
      return root(("ue", 0, top), lambda: hc.GolombCode(hc.ue_range(0, top)))
    if tag in (H_MOD_FLAG,):
      return root(("u1", 0, 1), lambda: hc.fixed_words(1, (0, 1)))
    if tag == H_MOD_IDC:  # 0/1: a short-term picture below/above the prediction; 3: end
      _, _, _, _, refs, _, count = s
      values = (3,) if count == refs else (0, 1, 3)
      return root(("ue", values), lambda: hc.GolombCode(hc.ue_values(values)))
    if tag == H_MOD_DIFF:
      values = self._diffs(ctx.refs, s[5], s[7])
      return root(("ue", values), lambda: hc.GolombCode(hc.ue_values(values)))
    if tag == H_MARKING:
      n = 2 if ctx.idr else 1
      return root(("u", n, 0), lambda: hc.fixed_words(n, [0]))
    if tag == H_QP_DELTA:
      lo, hi = -ps.pic_init_qp, 51 - ps.pic_init_qp  # SliceQPY in 0..51
      return root(("se", lo, hi), lambda: hc.se_code(hc.se_range(lo, hi)))
    if tag == H_DEBLOCK_IDC:
      return root(("ue", 0, 2), lambda: hc.GolombCode(hc.ue_range(0, 2)))
    return root(("se", -6, 6), lambda: hc.se_code(hc.se_range(-6, 6)))

  def _diffs(self, refs: int, back: int, idc: int) -> tuple[int, ...]:
    """abs_diff_pic_num_minus1 values that land on a reference picture. `back` is how far the
    predicted picture number lies below CurrPicNum (mod MaxPicNum); references are 1..refs
    below it (every picture is a reference, frame_num has no gaps)."""
    top = self.ps.max_frame_num
    if idc == 0:  # picNumPred - (diff + 1)
      return tuple(sorted({(d - back - 1) % top for d in range(1, refs + 1)}))
    return tuple(sorted({(back - d - 1) % top for d in range(1, refs + 1)}))

  def after(self, s, value):
    tag, ctx = s[0], s[1]
    if tag == H_FIRST_MB:  # the rest is the same for every slice of the picture
      return (H_SLICE_TYPE, _without_mb(ctx))
    if tag == H_SLICE_TYPE:
      return (H_PPS_ID, ctx, value)
    if tag == H_PPS_ID:
      return (H_FRAME_NUM, ctx, s[2])
    if tag == H_FRAME_NUM:
      return (H_IDR_PIC_ID, ctx, s[2]) if ctx.idr else self._after_idr(ctx, s[2], -1)
    if tag == H_IDR_PIC_ID:
      return self._after_idr(ctx, s[2], value)
    slice_type, idr_pic_id = s[2], s[3]
    if tag == H_OVERRIDE:
      if value:
        return (H_NUM_REFS, ctx, slice_type, idr_pic_id)
      return (H_MOD_FLAG, ctx, slice_type, idr_pic_id, self.ps.num_ref_idx_default)
    if tag == H_NUM_REFS:
      return (H_MOD_FLAG, ctx, slice_type, idr_pic_id, value + 1)
    if tag == H_MOD_FLAG:
      if value:
        return (H_MOD_IDC, ctx, slice_type, idr_pic_id, s[4], 0, 0)
      return (H_MARKING, ctx, slice_type, idr_pic_id, s[4])
    if tag == H_MOD_IDC:
      if value == 3:
        return (H_MARKING, ctx, slice_type, idr_pic_id, s[4])
      return (H_MOD_DIFF, ctx, slice_type, idr_pic_id, s[4], s[5], s[6], value)
    if tag == H_MOD_DIFF:
      _, _, _, _, refs, back, count, idc = s
      top = self.ps.max_frame_num
      back = (back + value + 1) % top if idc == 0 else (back - value - 1) % top
      return (H_MOD_IDC, ctx, slice_type, idr_pic_id, refs, back, count + 1)
    if tag == H_MARKING:
      return (H_QP_DELTA, *s[1:])
    if tag == H_QP_DELTA:
      if self.ps.deblocking_filter_control_present:
        return (H_DEBLOCK_IDC, *s[1:])
      return self._data(s)
    if tag == H_DEBLOCK_IDC:
      return self._data(s) if value == 1 else (H_ALPHA, *s[1:])
    if tag == H_ALPHA:
      return (H_BETA, *s[1:])
    return self._data(s)

  def _after_idr(self, ctx, slice_type, idr_pic_id):
    if slice_type in P_TYPES:
      return (H_OVERRIDE, ctx, slice_type, idr_pic_id)
    return (H_MARKING, ctx, slice_type, idr_pic_id, 0)

  def _data(self, s):
    _, ctx, slice_type, idr_pic_id, num_refs = s
    first = mb.start(slice_type in P_TYPES, num_refs)
    return (DATA_START, (slice_type, idr_pic_id), first)
