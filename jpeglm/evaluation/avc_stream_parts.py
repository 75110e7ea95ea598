"""Where a model spends its bits in an H.264 stream: parameter sets, slice headers, and the
macroblock data of intra (I) and inter (P) macroblocks.

Each byte of the Annex-B stream gets one part:
  - parameter_sets: SPS and PPS NAL units, their start codes included;
  - slice_headers: a slice's start code, NAL header byte and slice header, up to the bit
    where the header ends (jpeglm.codecs.h264_slice_split). The byte holding both the
    header's last bits and the data's first bits counts as header;
  - i_mb_data / p_mb_data: the rest of the slice (macroblock layer, trailing bits,
    emulation-prevention bytes), by the kind of the slice's first macroblock: with the
    paper's one macroblock per slice that is the macroblock's own kind (a P_Skip is P data;
    an intra macroblock in a P slice is I data);
  - other: any other NAL unit (SEI, AUD) and bytes before the first start code;
  - end: no bytes; the EOS token's bits.
A token's bits are shared equally among the bytes it spells (jpeglm.evaluation.stream_parts).
"""

from __future__ import annotations

import numpy as np

from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs import h264_slice_split as slices
from jpeglm.evaluation.stream_parts import spread_token_bits

PARTS = ("parameter_sets", "slice_headers", "i_mb_data", "p_mb_data", "other", "end")
_INDEX = {name: i for i, name in enumerate(PARTS)}


def byte_parts(stream: bytes) -> np.ndarray:
  """The part (an index into PARTS) of every byte of one H.264 Annex-B stream."""
  parts = np.full(len(stream), _INDEX["other"], np.int8)
  sps_by_id, pps_by_id = {}, {}
  for nal in h264.split_nals(stream):
    payload = stream[nal.payload_start:nal.end]
    kind = nal.kind(stream)
    if kind == h264.NAL_SPS:
      sps = h264.parse_sps(payload)
      sps_by_id[sps.sps_id] = sps
      parts[nal.start:nal.end] = _INDEX["parameter_sets"]
    elif kind == h264.NAL_PPS:
      pps = h264.parse_pps(payload)
      pps_by_id[pps.pps_id] = pps
      parts[nal.start:nal.end] = _INDEX["parameter_sets"]
    elif kind in (h264.NAL_SLICE, h264.NAL_IDR):
      start = slices.read_slice_start(payload, sps_by_id, pps_by_id)
      last_header_byte = slices.rbsp_offsets(payload[1:])[(start.header_bits - 1) // 8]
      data_start = nal.payload_start + 1 + last_header_byte + 1
      parts[nal.start:data_start] = _INDEX["slice_headers"]
      parts[data_start:nal.end] = _INDEX["i_mb_data" if start.intra_mb else "p_mb_data"]
  return parts


def bits_by_part(tokenizer, streams: list[bytes], bits: list[np.ndarray]
                 ) -> dict[str, dict[str, float]]:
  """{part: {"bits": per stream, "bytes": per stream, "bits_per_byte"}} over `streams`,
  with `bits` from `bits_per_byte.token_bits`; EOS's bits count to "end"."""
  return spread_token_bits(tokenizer, streams, bits, byte_parts, PARTS)
