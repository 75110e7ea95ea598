"""The sequence and picture parameter sets (ITU-T H.264 7.3.2.1-2) as the grammar needs them.

`AvcGrammar` takes the SPS/PPS bytes verbatim from an encode (they depend only on the codec
settings) and reads from them every field that shapes the slice syntax; `check_supported`
refuses settings whose syntax the grammar does not model (CABAC, interlace, POC types 0/1,
weighted prediction, redundant pictures, 8x8 transforms).
"""

from __future__ import annotations

import dataclasses

from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs.errors import CodecError


@dataclasses.dataclass(frozen=True)
class ParameterSets:
  """The SPS and PPS fields that shape the slice syntax."""
  profile_idc: int
  level_idc: int
  constraint_set3: bool  # with level_idc 11 in baseline profile: level 1b
  sps_id: int
  chroma_format_idc: int
  log2_max_frame_num: int
  poc_type: int
  max_num_ref_frames: int
  width_mbs: int
  height_mbs: int
  frame_mbs_only: bool
  pps_id: int
  pps_sps_id: int
  cabac: bool
  num_ref_idx_default: int  # num_ref_idx_l0_default_active_minus1 + 1
  weighted_pred: bool
  pic_init_qp: int
  deblocking_filter_control_present: bool
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
        (self.weighted_pred, "weighted prediction"),
        (self.redundant_pic_cnt_present, "redundant pictures"),
        (self.pps_has_extension, "PPS extensions (8x8 transform, scaling lists)"),
    ]
    for bad, what in problems:
      if bad:
        raise CodecError(f"syntax-safe H.264 sampling does not support {what}")


def parse(sps_payload: bytes, pps_payload: bytes) -> ParameterSets:
  """From the two NAL payloads (NAL header byte included, emulation bytes not removed), read
  by `h264_bitstream`'s parsers (a PPS with slice groups is refused there)."""
  sps, pps = h264.parse_sps(sps_payload), h264.parse_pps(pps_payload)
  return ParameterSets(
      sps.profile_idc, sps.level_idc, sps.constraint_set3, sps.sps_id, sps.chroma_format_idc,
      sps.log2_max_frame_num, sps.poc_type, sps.max_num_ref_frames, sps.width_mbs,
      sps.height_mbs, sps.frame_mbs_only, pps.pps_id, pps.sps_id, pps.entropy_coding_mode,
      pps.num_ref_idx_l0_default, pps.weighted_pred, pps.pic_init_qp,
      pps.deblocking_filter_control_present, pps.redundant_pic_cnt_present, pps.has_extension)


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
