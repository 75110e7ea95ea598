"""MP4 remux of raw H.264 streams (jpeglm.codecs.avc_container), on the built-in real clips:
the MP4's frames are the raw stream's, pixel for pixel, at the codec's frame rate."""

import fractions
import io

import av
import numpy as np
import pytest

from data_pipeline.media_files import builtin_videos
from jpeglm.codecs import AvcCodec, CodecError
from jpeglm.codecs import h264_bitstream as h264
from jpeglm.codecs.avc_container import mp4_frames, to_mp4

VIDEOS = builtin_videos()


@pytest.mark.parametrize("size", [(64, 36), (256, 144)])
def test_mp4_frames_equal_the_raw_streams_frames(size):
  codec = AvcCodec(width=size[0], height=size[1])
  for video in VIDEOS:
    raw = codec.encode(video)
    mp4 = to_mp4(raw, codec.fps)
    expected = codec.decode(raw).frames
    got = mp4_frames(mp4)
    assert len(got) == len(expected) > 0
    assert all(np.array_equal(a, b) for a, b in zip(got, expected)), video


def test_mp4_is_a_stream_copy_at_the_codec_frame_rate():
  codec = AvcCodec(width=64, height=36)
  raw = codec.encode(VIDEOS[1])
  with av.open(io.BytesIO(to_mp4(raw, codec.fps))) as container:
    assert container.format.name.startswith("mov,mp4")
    stream = container.streams.video[0]
    assert stream.codec_context.name == "h264" and stream.average_rate == codec.fps
    assert float(stream.duration * stream.time_base) == pytest.approx(codec.seconds)
    packets = [p for p in container.demux(stream) if p.size]
  assert [p.pts * stream.time_base for p in packets] == [
      fractions.Fraction(i, codec.fps) for i in range(codec.num_frames)]
  # No re-encode: the MP4 holds the raw stream's NAL units byte for byte, each behind a
  # 4-byte length instead of a start code.
  stored = []
  for packet in packets:
    data, at = bytes(packet), 0
    while at < len(data):
      size = int.from_bytes(data[at:at + 4], "big")
      stored.append(data[at + 4:at + 4 + size])
      at += 4 + size
  assert stored == [raw[n.payload_start:n.end] for n in h264.split_nals(raw)]


def test_a_truncated_stream_remuxes_the_frames_it_has():
  codec = AvcCodec(width=64, height=36)
  raw = codec.encode(VIDEOS[0])
  cut = codec.prefix(raw, 7)
  assert len(mp4_frames(to_mp4(cut, codec.fps))) == 7


def test_bytes_with_no_video_are_refused():
  with pytest.raises(CodecError):
    to_mp4(b"\x00\x00\x00\x01" + bytes(range(200)), 3)
