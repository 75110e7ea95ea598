"""The sequence and picture parameter sets (ITU-T H.264 7.3.2.1-2) as the grammar needs them.

`AvcGrammar` takes the SPS/PPS bytes verbatim from an encode (they depend only on the codec
settings) and reads from them every field that shapes the slice syntax; `check_supported`
refuses settings whose syntax the grammar does not model (CABAC, interlace, POC types 0/1,
slice groups, weighted prediction, redundant pictures, 8x8 transforms).
"""

from __future__ import annotations

import dataclasses

from jpeglm.codecs.errors import CodecError
from jpeglm.codecs.h264_bitstream import BitReader, rbsp, skip_scaling_list

_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


@dataclasses.dataclass(frozen=True)
class ParameterSets:
  profile_idc: int
  level_idc: int
  constraint_set3: bool  # with level_idc 11 in baseline profile: level 1b
  sps_id: int
  chroma_format_idc: int
  log2_max_frame_num: int
  poc_type: int
  max_num_ref_frames: int
  gaps_in_frame_num_allowed: bool
  width_mbs: int
  height_mbs: int
  frame_mbs_only: bool
  pps_id: int
  pps_sps_id: int
  cabac: bool
  bottom_field_pic_order_present: bool
  num_slice_groups: int
  num_ref_idx_default: int  # num_ref_idx_l0_default_active_minus1 + 1
  weighted_pred: bool
  pic_init_qp: int
  deblocking_filter_control_present: bool
  constrained_intra_pred: bool
  redundant_pic_cnt_present: bool
  pps_has_extension: bool  # transform_8x8_mode_flag and the rest follow

  @property
  def mbs_per_frame(self) -> int:
    return self.width_mbs * self.height_mbs

  @property
  def max_frame_num(self) -> int:
    return 1 << self.log2_max_frame_num

  def check_supported(self) -> None:
    problems = [
        (self.chroma_format_idc != 1, "chroma other than 4:2:0"),
        (not self.frame_mbs_only, "interlaced coding"),
        (self.poc_type != 2, f"pic_order_cnt_type {self.poc_type} (only 2: no B-frames)"),
        (self.pps_sps_id != self.sps_id, "a PPS that names another SPS"),
        (self.cabac, "CABAC (baseline profile is CAVLC)"),
        (self.num_slice_groups != 1, "slice groups"),
        (self.weighted_pred, "weighted prediction"),
        (self.redundant_pic_cnt_present, "redundant pictures"),
        (self.pps_has_extension, "PPS extensions (8x8 transform, scaling lists)"),
    ]
    for bad, what in problems:
      if bad:
        raise CodecError(f"syntax-safe H.264 sampling does not support {what}")


def _more_rbsp_data(data: bytes, bit_pos: int) -> bool:
  """Whether bits other than rbsp_trailing_bits follow `bit_pos` (7.2)."""
  value = int.from_bytes(data, "big")
  total = len(data) * 8
  last_one = total - ((value & -value).bit_length())  # position of the stop bit
  return bit_pos < last_one


def parse(sps_payload: bytes, pps_payload: bytes) -> ParameterSets:
  """From the two NAL payloads (NAL header byte included, emulation bytes not removed)."""
  r = BitReader(rbsp(sps_payload[1:]))
  profile = r.u(8)
  constraints = r.u(8)
  level = r.u(8)
  sps_id = r.ue()
  chroma = 1
  if profile in _HIGH_PROFILES:
    chroma = r.ue()
    if chroma == 3:
      r.u(1)
    r.ue(), r.ue(), r.u(1)  # bit depths, qpprime_y_zero_transform_bypass
    if r.u(1):
      for k in range(8 if chroma != 3 else 12):
        if r.u(1):
          skip_scaling_list(r, 16 if k < 6 else 64)
  log2_max_frame_num = r.ue() + 4
  poc_type = r.ue()
  if poc_type == 0:
    r.ue()
  elif poc_type == 1:
    r.u(1), r.se(), r.se()
    for _ in range(r.ue()):
      r.se()
  refs = r.ue()
  gaps = bool(r.u(1))
  width_mbs = r.ue() + 1
  height_units = r.ue() + 1
  frame_mbs_only = bool(r.u(1))

  data = rbsp(pps_payload[1:])
  p = BitReader(data)
  pps_id, pps_sps_id = p.ue(), p.ue()
  cabac, bottom_field = bool(p.u(1)), bool(p.u(1))
  groups = p.ue() + 1
  if groups > 1:
    raise CodecError("syntax-safe H.264 sampling does not support slice groups")
  ref_default = p.ue() + 1
  p.ue()  # num_ref_idx_l1_default_active_minus1 (B slices only)
  weighted_pred = bool(p.u(1))
  p.u(2)  # weighted_bipred_idc (B slices only)
  init_qp = 26 + p.se()
  p.se(), p.se()  # pic_init_qs (SP/SI only), chroma_qp_index_offset (no effect on syntax)
  deblocking, constrained, redundant = bool(p.u(1)), bool(p.u(1)), bool(p.u(1))
  return ParameterSets(
      profile, level, bool(constraints & 0x10), sps_id, chroma, log2_max_frame_num, poc_type,
      refs, gaps, width_mbs, height_units * (1 if frame_mbs_only else 2), frame_mbs_only,
      pps_id, pps_sps_id, cabac, bottom_field, groups, ref_default, weighted_pred, init_qp,
      deblocking, constrained, redundant, _more_rbsp_data(data, p.pos))


def vertical_mv_limit(ps: ParameterSets) -> int:
  """Table A-1 MaxVmvR in quarter luma samples: vertical MVs lie in [-limit, limit - 1]."""
  level_idc = ps.level_idc
  level_1b = level_idc == 9 or (level_idc == 11 and ps.constraint_set3
                                and ps.profile_idc in (66, 77, 88))
  if level_1b or level_idc == 10:
    return 64 * 4
  if level_idc <= 20:
    return 128 * 4
  if level_idc <= 30:
    return 256 * 4
  return 512 * 4


HORIZONTAL_MV_LIMIT = 2048 * 4  # [-2048, 2047.75] luma samples for every level (A.3.1)
