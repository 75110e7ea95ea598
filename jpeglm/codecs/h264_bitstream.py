"""Reading H.264 Annex-B streams at the NAL level: start codes, SPS fields, slice headers.

Enough of the spec (ITU-T H.264 7.3) to check what libx264 actually produced (PyAV ignores
unknown options silently), to find frame boundaries for prefixes, and to refuse absurd
declared sizes before decoding.
"""

from __future__ import annotations

import dataclasses

from jpeglm.codecs.errors import CodecError

NAL_SLICE, NAL_IDR, NAL_SEI, NAL_SPS, NAL_PPS, NAL_AUD = 1, 5, 6, 7, 8, 9
SLICE_TYPES = {0: "P", 1: "B", 2: "I", 3: "SP", 4: "SI"}
_HIGH_PROFILES = {100, 110, 122, 244, 44, 83, 86, 118, 128, 138, 139, 134, 135}


@dataclasses.dataclass(frozen=True)
class Nal:
  start: int  # offset of the start code
  payload_start: int  # offset of the NAL header byte
  end: int  # offset just past the NAL (the next start code or the end of data)

  def header(self, data: bytes) -> int:
    return data[self.payload_start]

  def kind(self, data: bytes) -> int:
    return data[self.payload_start] & 0x1F


def split_nals(data: bytes) -> list[Nal]:
  """NAL units of an Annex-B stream (3- or 4-byte start codes)."""
  starts = []
  i = data.find(b"\x00\x00\x01")
  while i != -1:
    begin = i - 1 if i > 0 and data[i - 1] == 0 else i
    starts.append((begin, i + 3))
    i = data.find(b"\x00\x00\x01", i + 3)
  nals = []
  for k, (begin, payload) in enumerate(starts):
    end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
    if payload < end:
      nals.append(Nal(begin, payload, end))
  return nals


def rbsp(payload: bytes) -> bytes:
  """Removes emulation-prevention bytes (00 00 03 -> 00 00)."""
  return payload.replace(b"\x00\x00\x03", b"\x00\x00")


class BitReader:
  def __init__(self, data: bytes):
    self._value = int.from_bytes(data, "big")
    self._bits = len(data) * 8
    self.pos = 0

  def u(self, n: int) -> int:
    if self.pos + n > self._bits:
      raise CodecError("H.264 header field runs past the end of its NAL unit")
    self.pos += n
    return (self._value >> (self._bits - self.pos)) & ((1 << n) - 1)

  def ue(self) -> int:
    zeros = 0
    while self.u(1) == 0:
      zeros += 1
      if zeros > 31:
        raise CodecError("malformed exp-Golomb code in an H.264 header")
    return (1 << zeros) - 1 + self.u(zeros)

  def se(self) -> int:
    return se_value(self.ue())


def se_value(code_num: int) -> int:
  """se(v) of an exp-Golomb codeNum (9.1.1): 1, -1, 2, -2, ... for 1, 2, 3, 4, ..."""
  return (code_num + 1) // 2 if code_num % 2 else -(code_num // 2)


@dataclasses.dataclass(frozen=True)
class Sps:
  profile_idc: int
  level_idc: int
  constraint_set3: bool  # with level_idc 11 in baseline profile: level 1b
  sps_id: int
  chroma_format_idc: int
  width_mbs: int
  height_mbs: int
  frame_mbs_only: bool
  max_num_ref_frames: int
  log2_max_frame_num: int
  poc_type: int
  log2_max_poc_lsb: int

  @property
  def mbs_per_frame(self) -> int:
    return self.width_mbs * self.height_mbs


def skip_scaling_list(r: BitReader, size: int) -> None:
  last, nxt = 8, 8
  for _ in range(size):
    if nxt:
      nxt = (last + r.se() + 256) % 256
    last = nxt or last


def parse_sps(payload: bytes) -> Sps:
  """The SPS fields the project reads (7.3.2.1), `payload` from its NAL header byte."""
  r = BitReader(rbsp(payload[1:]))
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
    if r.u(1):  # seq_scaling_matrix_present
      for k in range(8 if chroma != 3 else 12):
        if r.u(1):
          skip_scaling_list(r, 16 if k < 6 else 64)
  log2_max_frame_num = r.ue() + 4
  poc_type = r.ue()
  log2_max_poc_lsb = 0
  if poc_type == 0:
    log2_max_poc_lsb = r.ue() + 4
  elif poc_type == 1:
    r.u(1), r.se(), r.se()
    for _ in range(r.ue()):
      r.se()
  refs = r.ue()
  r.u(1)  # gaps_in_frame_num_value_allowed
  width_mbs = r.ue() + 1
  height_units = r.ue() + 1
  frame_mbs_only = bool(r.u(1))
  height_mbs = height_units * (1 if frame_mbs_only else 2)
  return Sps(profile, level, bool(constraints & 0x10), sps_id, chroma, width_mbs, height_mbs,
             frame_mbs_only, refs, log2_max_frame_num, poc_type, log2_max_poc_lsb)


@dataclasses.dataclass(frozen=True)
class Pps:
  pps_id: int
  sps_id: int
  entropy_coding_mode: bool  # CABAC
  bottom_field_pic_order_in_frame_present: bool
  num_ref_idx_l0_default: int
  num_ref_idx_l1_default: int
  weighted_pred: bool
  weighted_bipred_idc: int
  pic_init_qp: int
  deblocking_filter_control_present: bool
  redundant_pic_cnt_present: bool
  has_extension: bool  # transform_8x8_mode_flag and the rest follow


def _more_rbsp_data(data: bytes, bit_pos: int) -> bool:
  """Whether bits other than rbsp_trailing_bits follow `bit_pos` (7.2)."""
  value = int.from_bytes(data, "big")
  total = len(data) * 8
  last_one = total - ((value & -value).bit_length())  # position of the stop bit
  return bit_pos < last_one


def parse_pps(payload: bytes) -> Pps:
  """The PPS fields the project reads (7.3.2.2), `payload` from its NAL header byte."""
  data = rbsp(payload[1:])
  r = BitReader(data)
  pps_id, sps = r.ue(), r.ue()
  cabac, bottom_field_poc = bool(r.u(1)), bool(r.u(1))
  if r.ue():
    raise CodecError("H.264 PPS with slice groups (FMO): not supported")
  l0, l1 = r.ue() + 1, r.ue() + 1
  weighted_pred, bipred = bool(r.u(1)), r.u(2)
  init_qp = 26 + r.se()
  r.se(), r.se()  # pic_init_qs_minus26 (SP/SI only), chroma_qp_index_offset
  deblocking = bool(r.u(1))
  r.u(1)  # constrained_intra_pred_flag
  redundant = bool(r.u(1))
  return Pps(pps_id, sps, cabac, bottom_field_poc, l0, l1, weighted_pred, bipred, init_qp,
             deblocking, redundant, _more_rbsp_data(data, r.pos))


def slice_start(payload: bytes) -> tuple[int, str]:
  """(first_mb_in_slice, slice type letter) from a slice NAL's header."""
  r = BitReader(rbsp(payload[1:12]))
  first_mb = r.ue()
  return first_mb, SLICE_TYPES.get(r.ue() % 5, "?")
