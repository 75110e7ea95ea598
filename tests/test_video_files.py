"""A sampled video's files (jpeglm.sampling.video_files), from real clips, a cut one and bytes
that are no video: what is written, and what samples.jsonl learns of it."""

import os

import numpy as np
import pytest
from PIL import Image

from data_pipeline.media_files import builtin_videos
from jpeglm.codecs import AvcCodec
from jpeglm.codecs.avc_container import mp4_frames
from jpeglm.sampling import video_files


@pytest.fixture(scope="module")
def codec():
  return AvcCodec(width=64, height=36)


@pytest.fixture(scope="module")
def stream(codec):
  return codec.encode(builtin_videos()[0])


def test_a_whole_stream_gives_every_file(tmp_path, codec, stream):
  decoded = video_files.decode_sample(codec, stream)
  record = video_files.write_sample(str(tmp_path), 3, codec, stream, decoded)
  assert record == {"frames_decoded": 15, "decoder_errors": 0, "first_decoder_error": "",
                    "mp4": "sample_003.mp4", "gif": "sample_003.gif"}
  assert (tmp_path / "sample_003.h264").read_bytes() == stream
  mp4 = mp4_frames((tmp_path / "sample_003.mp4").read_bytes())
  assert all(np.array_equal(a, b) for a, b in zip(mp4, decoded.frames, strict=True))
  gif = Image.open(tmp_path / "sample_003.gif")
  assert gif.n_frames == 15 and gif.size == (64, 36)
  assert Image.open(tmp_path / "sample_003.png").size == (15 * 128, 72)  # the frame strip


def test_a_damaged_stream_still_shows_what_decodes(tmp_path, codec, stream):
  cut = stream[:len(codec.prefix(stream, 12)) + 40]  # frame 13 begun, not finished
  decoded = video_files.decode_sample(codec, cut)
  assert not decoded.complete and "missing slices" in decoded.reason
  record = video_files.write_sample(str(tmp_path), 0, codec, cut, decoded)
  assert record["frames_decoded"] >= 12 and record["mp4"] and record["gif"]


def test_bytes_with_no_parameter_sets_give_no_video(tmp_path, codec):
  junk = b"\x00\x00\x00\x01\x65" + bytes(range(1, 200))
  decoded = video_files.decode_sample(codec, junk)
  assert decoded.frames == [] and not decoded.complete and "SPS" in decoded.reason
  record = video_files.write_sample(str(tmp_path), 1, codec, junk, decoded)
  assert record["frames_decoded"] == 0 and record["mp4"] is None and record["gif"] is None
  assert sorted(os.listdir(tmp_path)) == ["sample_001.h264", "sample_001.png"]


def test_continuation_row_shows_prompt_continued_and_true_frames(codec, stream):
  prompt, truth = video_files.prompt_and_truth(codec, stream, 10)
  assert len(prompt) == 10 and len(truth) == 5
  row = video_files.continuation_row(prompt, truth[:3], truth)
  strips = [10 * 128, 5 * 128, 5 * 128]  # 3 continued frames and 2 grey tiles
  assert row.size == (sum(strips) + 2 * video_files.GROUP_GAP,
                      video_files.LABEL_HEIGHT + video_files.STRIP_HEIGHT)
  pixels = np.asarray(row)
  start = strips[0] + video_files.GROUP_GAP + strips[1] + video_files.GROUP_GAP
  expected = np.asarray(Image.fromarray(truth[0]).resize((128, 72)))
  assert np.array_equal(pixels[video_files.LABEL_HEIGHT:, start:start + 128], expected)


def test_a_continuation_is_valid_only_if_it_adds_frames(codec, stream):
  prompt = codec.prefix(stream, 10)
  whole = video_files.decode_sample(codec, stream)
  assert video_files.verdict(whole, True, 10) == (True, "")
  assert video_files.verdict(whole, False, 10)[0] is False  # a token that is no bytes
  # The prompt alone, or its last slice padded with bytes the decoder skips, decodes cleanly
  # but continues nothing.
  for data in (prompt, prompt + bytes(range(1, 200))):
    decoded = video_files.decode_sample(codec, data)
    assert decoded.complete and len(decoded.frames) == 10
    valid, reason = video_files.verdict(decoded, True, 10)
    assert not valid and "no frame added" in reason
  assert video_files.verdict(video_files.decode_sample(codec, codec.prefix(stream, 11)),
                             True, 10) == (True, "")



def test_a_syntax_safe_sample_cut_by_the_context_keeps_its_whole_frames(codec, stream,
                                                                         tokenizer_path):
  from jpeglm.sampling.generate import Generation
  from jpeglm.tokenizer import ByteTokenizer

  frames = codec.describe(stream)["frames"]
  cut = stream[:(frames[3]["start"] + frames[3]["end"]) // 2]
  whole = codec.whole_frames(cut)
  assert whole == codec.prefix(stream, 3)  # frame 3 was cut: frames 0-2 stay
  assert codec.decode(whole).complete and len(codec.decode(whole).frames) == 3
  assert not codec.decode(cut).complete
  # The final NAL unit is never trusted, so a stream that ended cleanly loses its last slice's
  # frame; parameter sets cut after the last whole frame go too.
  assert codec.whole_frames(stream) == codec.prefix(stream, len(frames) - 1)
  sps_pps = stream[:frames[0]["start"]]
  assert codec.whole_frames(codec.prefix(stream, 3) + sps_pps[:-3]) == codec.prefix(stream, 3)
  assert codec.whole_frames(codec.prefix(stream, 3) + sps_pps) == codec.prefix(stream, 3)

  tokenizer = ByteTokenizer.load(tokenizer_path)
  g = Generation(prompt=[tokenizer.bos_id], tokens=tokenizer.encode(cut), ended_with_eos=False,
                 seconds=0.0)
  assert video_files.sample_stream(codec, tokenizer, g, syntax_safe=True) == (whole, True)
  assert video_files.sample_stream(codec, tokenizer, g, syntax_safe=False) == (cut, True)
