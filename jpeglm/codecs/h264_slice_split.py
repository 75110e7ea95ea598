"""Where an H.264 slice's header ends and its data begins, and what its first macroblock is.

Reads a slice NAL unit's header field by field (ITU-T H.264 7.3.3) with the SPS and PPS it
refers to, to the bit where the slice data begins, and then the first macroblock's
mb_skip_run / mb_type (7.3.4, 7.4.5). With the paper's one macroblock per slice that tells
each slice's data apart as I- or P-macroblock data (jpeglm.evaluation.avc_stream_parts).
A plain reader of finished streams, for any slice a baseline or main profile encoder writes;
the sampler's grammar (jpeglm.codecs.h264_grammar) is another thing. FMO slice groups and
pic_order_cnt_type 1 are refused (libx264 writes neither).
"""

from __future__ import annotations

import dataclasses

from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs.errors import CodecError

P_SLICE, B_SLICE, I_SLICE, SP_SLICE, SI_SLICE = range(5)
# mb_type from which a P/SP or B slice's macroblock is intra (Tables 7-13, 7-14, then 7-11).
FIRST_INTRA_MB_TYPE = {P_SLICE: 5, SP_SLICE: 5, B_SLICE: 23}


@dataclasses.dataclass(frozen=True)
class SliceStart:
  slice_type: int  # 0 P, 1 B, 2 I, 3 SP, 4 SI
  header_bits: int  # bits of the slice header in the RBSP (after the NAL header byte)
  intra_mb: bool  # the slice's first macroblock is intra (I slices: always)


def _ref_pic_list_modification(r: h264.BitReader) -> None:
  if r.u(1):
    while (idc := r.ue()) != 3:
      if idc > 5:
        raise CodecError(f"modification_of_pic_nums_idc {idc} out of range")
      r.ue()  # abs_diff_pic_num_minus1, long_term_pic_num or abs_diff_view_idx_minus1


def _pred_weight_table(r: h264.BitReader, refs_l0: int, refs_l1: int) -> None:
  r.ue(), r.ue()  # luma_log2_weight_denom, chroma_log2_weight_denom (4:2:0)
  for refs in (refs_l0, refs_l1):
    for _ in range(refs):
      if r.u(1):  # luma_weight_flag
        r.se(), r.se()
      if r.u(1):  # chroma_weight_flag
        r.se(), r.se(), r.se(), r.se()


def _dec_ref_pic_marking(r: h264.BitReader, idr: bool) -> None:
  if idr:
    r.u(1), r.u(1)  # no_output_of_prior_pics_flag, long_term_reference_flag
    return
  if r.u(1):  # adaptive_ref_pic_marking_mode_flag
    while (op := r.ue()) != 0:
      if op > 6:
        raise CodecError(f"memory_management_control_operation {op} out of range")
      if op in (1, 3):
        r.ue()  # difference_of_pic_nums_minus1
      if op == 2:
        r.ue()  # long_term_pic_num
      if op in (3, 6):
        r.ue()  # long_term_frame_idx
      if op == 4:
        r.ue()  # max_long_term_frame_idx_plus1


def read_slice_start(payload: bytes, sps_by_id: dict[int, h264.Sps], pps_by_id: dict[int, h264.Pps]
                     ) -> SliceStart:
  """The header length and first macroblock kind of a slice NAL (`payload` from its header
  byte), given the parameter sets seen so far. Raises CodecError on what it cannot read."""
  nal_ref_idc, idr = payload[0] >> 5 & 3, payload[0] & 0x1F == h264.NAL_IDR
  r = h264.BitReader(h264.rbsp(payload[1:]))
  r.ue()  # first_mb_in_slice
  slice_type = r.ue() % 5
  pps_id = r.ue()
  if pps_id not in pps_by_id:
    raise CodecError(f"slice refers to PPS {pps_id}, not in the stream before it")
  pps = pps_by_id[pps_id]
  if pps.sps_id not in sps_by_id:
    raise CodecError(f"PPS {pps_id} refers to SPS {pps.sps_id}, not in the stream before it")
  sps = sps_by_id[pps.sps_id]
  r.u(sps.log2_max_frame_num)  # frame_num
  field_pic = False
  if not sps.frame_mbs_only:
    field_pic = bool(r.u(1))
    if field_pic:
      r.u(1)  # bottom_field_flag
  if idr:
    r.ue()  # idr_pic_id
  if sps.poc_type == 0:
    r.u(sps.log2_max_poc_lsb)
    if pps.bottom_field_pic_order_in_frame_present and not field_pic:
      r.se()
  elif sps.poc_type == 1:
    raise CodecError("pic_order_cnt_type 1: not supported")
  if pps.redundant_pic_cnt_present:
    r.ue()
  if slice_type == B_SLICE:
    r.u(1)  # direct_spatial_mv_pred_flag
  refs_l0, refs_l1 = pps.num_ref_idx_l0_default, pps.num_ref_idx_l1_default
  if slice_type in (P_SLICE, SP_SLICE, B_SLICE) and r.u(1):  # num_ref_idx_active_override
    refs_l0 = r.ue() + 1
    if slice_type == B_SLICE:
      refs_l1 = r.ue() + 1
  if slice_type not in (I_SLICE, SI_SLICE):
    _ref_pic_list_modification(r)
  if slice_type == B_SLICE:
    _ref_pic_list_modification(r)
  if ((pps.weighted_pred and slice_type in (P_SLICE, SP_SLICE))
      or (pps.weighted_bipred_idc == 1 and slice_type == B_SLICE)):
    _pred_weight_table(r, refs_l0, refs_l1 if slice_type == B_SLICE else 0)
  if nal_ref_idc:
    _dec_ref_pic_marking(r, idr)
  if pps.entropy_coding_mode and slice_type not in (I_SLICE, SI_SLICE):
    r.ue()  # cabac_init_idc
  r.se()  # slice_qp_delta
  if slice_type in (SP_SLICE, SI_SLICE):
    if slice_type == SP_SLICE:
      r.u(1)  # sp_for_switch_flag
    r.se()  # slice_qs_delta
  if pps.deblocking_filter_control_present and r.ue() != 1:
    r.se(), r.se()  # slice_alpha_c0_offset_div2, slice_beta_offset_div2
  header_bits = r.pos
  intra = slice_type in (I_SLICE, SI_SLICE)
  if not intra and not pps.entropy_coding_mode:  # CAVLC: mb_skip_run, then mb_type
    intra = r.ue() == 0 and r.ue() >= FIRST_INTRA_MB_TYPE[slice_type]
  return SliceStart(slice_type, header_bits, intra)


def rbsp_offsets(payload: bytes) -> list[int]:
  """For each RBSP byte of `payload` (as `h264_bitstream.rbsp` reads it), its offset in
  `payload`: emulation-prevention bytes (00 00 03) have none."""
  offsets, i = [], 0
  while i < len(payload):
    if payload[i:i + 3] == b"\x00\x00\x03":
      offsets += [i, i + 1]
      i += 3
    else:
      offsets.append(i)
      i += 1
  return offsets
