"""Bits by H.264 stream part (jpeglm.evaluation.avc_stream_parts) on the built-in real clips:
every byte gets its part, slice headers end at the right bit, and the parts add up."""

import numpy as np
import pytest

from data_pipeline.media_files import builtin_videos
from jpeglm.codecs import AvcCodec
from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs import h264_slice_split as slices
from jpeglm.evaluation import avc_stream_parts
from jpeglm.tokenizer import ByteTokenizer

PARTS = avc_stream_parts.PARTS
VIDEOS = builtin_videos()


@pytest.fixture(scope="module")
def streams():
  codec = AvcCodec(width=64, height=36)
  return [codec.encode(v) for v in VIDEOS]


def _slices(stream):
  """(NAL, payload, SliceStart) of every slice, parameter sets read as the stream goes."""
  sps, pps, out = {}, {}, []
  for nal in h264.split_nals(stream):
    payload = stream[nal.payload_start:nal.end]
    if nal.kind(stream) == h264.NAL_SPS:
      s = h264.parse_sps(payload)
      sps[s.sps_id] = s
    elif nal.kind(stream) == h264.NAL_PPS:
      p = h264.parse_pps(payload)
      pps[p.pps_id] = p
    elif nal.kind(stream) in (h264.NAL_SLICE, h264.NAL_IDR):
      out.append((nal, payload, slices.read_slice_start(payload, sps, pps)))
  return out


def test_every_byte_has_its_part(streams):
  for stream in streams:
    parts = avc_stream_parts.byte_parts(stream)
    count = lambda name: int(np.sum(parts == PARTS.index(name)))
    nals = h264.split_nals(stream)
    parameter_sets = sum(n.end - n.start for n in nals
                         if n.kind(stream) in (h264.NAL_SPS, h264.NAL_PPS))
    assert count("parameter_sets") == parameter_sets > 0
    assert count("other") == 0  # SEI dropped: only parameter sets and slices
    found = _slices(stream)
    assert len(found) == 15 * 12 or len(found) == 12 * 12  # 12 macroblocks a frame, one a slice
    for nal, _, _ in found:  # a slice begins with its start code and header
      assert parts[nal.start] == parts[nal.payload_start] == PARTS.index("slice_headers")
    assert count("i_mb_data") > 0 and count("p_mb_data") > 0
    assert count("slice_headers") + count("i_mb_data") + count("p_mb_data") + \
        parameter_sets == len(stream)


def test_a_p_skip_slice_header_ends_where_its_skip_run_begins(streams):
  """Read independently of the parser: after the header a skipped macroblock's slice holds
  mb_skip_run = 1 (ue '010'), the stop bit and zero bits to the byte's end, nothing more."""
  skips = 0
  for stream in streams:
    for _, payload, start in _slices(stream):
      data = h264.rbsp(payload[1:])
      reader = h264.BitReader(data)
      reader.pos = start.header_bits
      if start.slice_type != slices.P_SLICE or reader.ue() != 1:
        continue
      skips += 1
      assert not start.intra_mb
      assert reader.u(1) == 1  # rbsp_stop_one_bit
      rest = len(data) * 8 - reader.pos
      assert rest < 8 and (rest == 0 or reader.u(rest) == 0)
  assert skips > 50


def test_intra_and_inter_macroblocks_are_told_apart():
  """At 256x144 some P slices carry intra macroblocks (mb_type >= 5): they count as I data."""
  codec = AvcCodec()
  found = _slices(codec.encode(VIDEOS[1]))
  kinds = {(s.slice_type, s.intra_mb) for _, _, s in found}
  assert kinds == {(slices.I_SLICE, True), (slices.P_SLICE, False), (slices.P_SLICE, True)}


def test_rbsp_offsets_skip_emulation_prevention_bytes():
  payload = b"\x11\x00\x00\x03\x01\x00\x00\x03\x00\x22"
  offsets = slices.rbsp_offsets(payload)
  assert bytes(payload[i] for i in offsets) == h264.rbsp(payload)
  assert offsets == [0, 1, 2, 4, 5, 6, 8, 9]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, streams):
  return ByteTokenizer.train(streams, 320, str(tmp_path_factory.mktemp("tok") / "t.model"))


def test_bits_by_part_share_out_every_bit(streams, tokenizer):
  """Whatever bits a model gives its tokens, the parts share them out exactly."""
  rng = np.random.default_rng(0)
  bits = [rng.uniform(0, 12, len(tokenizer.encode(s)) + 1) for s in streams]  # + EOS
  parts = avc_stream_parts.bits_by_part(tokenizer, streams, bits)
  assert tuple(parts) == PARTS
  total_bits = sum(p["bits"] for p in parts.values())
  total_bytes = sum(p["bytes"] for p in parts.values())
  assert total_bytes == pytest.approx(np.mean([len(s) for s in streams]))
  assert total_bits / total_bytes == pytest.approx(
      sum(b.sum() for b in bits) / sum(len(s) for s in streams), rel=1e-9)
  assert parts["end"]["bits"] == pytest.approx(np.mean([b[-1] for b in bits]))
  assert parts["end"]["bytes"] == 0
