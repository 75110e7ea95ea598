"""`jpeglm sample` and `jpeglm eval` on an AVC run: playable samples, and the paper's video
protocol (prompt 10 frames, continue 5), free and syntax-safe. A tiny run trained 2 steps on
the built-in clips at 32x32 (whole clips fit the 1,024-token context)."""

import json
import math
import os

import numpy as np
import pytest

from data_pipeline.media_files import builtin_videos
from jpeglm.cli import main
from jpeglm.codecs import AvcCodec
from jpeglm.codecs.avc_container import mp4_frames
from tests.train_helpers import CONFIG, tiny_overrides

pytestmark = pytest.mark.slow  # trains a run and samples from it (~1-2 min on 2 cores)

SIZE = {"codec.width": 32, "codec.height": 32}
HELD_OUT = builtin_videos()[0]  # bigbuckbunny: builtin:videos' evaluation split


@pytest.fixture(scope="module")
def video_run(tmp_path_factory):
  from jpeglm.config_io import load_config
  from jpeglm.tokenizer import ByteTokenizer
  from jpeglm.train import train_and_evaluate

  codec = AvcCodec(width=32, height=32)
  tokenizer = str(tmp_path_factory.mktemp("tok") / "tokenizer.model")
  ByteTokenizer.train([codec.encode(v) for v in builtin_videos()], 320, tokenizer)
  workdir = str(tmp_path_factory.mktemp("avc_run"))
  overrides = tiny_overrides(tokenizer, steps=2, **SIZE, **{
      "tokenizer.vocab_size": 320, "model.vocab_size": 320, "model.max_len": 1024,
      "data.num_shards": 1})
  train_and_evaluate(load_config(f"{CONFIG},codec=avc", overrides), workdir)
  return workdir


def _sample(workdir, out, syntax_safe):
  code = main(["sample", "--workdir", workdir, "--prompt", HELD_OUT, "--frames", "10",
               "--num-samples", "2", "--out", str(out),
               f"--config.sample.syntax_safe={syntax_safe}"])
  assert code == 0
  with open(out / "samples.jsonl") as f:
    return [json.loads(line) for line in f]


def test_free_samples_are_files_a_user_can_watch(video_run, tmp_path):
  records = _sample(video_run, tmp_path, False)
  codec = AvcCodec(width=32, height=32)
  assert len(records) == 2 and os.path.exists(tmp_path / "grid.png")
  for r in records:
    assert {"frames_decoded", "decoder_errors", "valid", "complete", "mp4", "gif"} <= set(r)
    assert r["prompt_frames"] == 10 and r["valid"] == r["complete"]
    stem = tmp_path / f"sample_{r['index']:03d}"
    assert os.path.exists(f"{stem}.h264") and os.path.exists(f"{stem}.png")
    # The prompt's 10 frames decode whatever the model wrote after them.
    assert r["frames_decoded"] >= 10
    raw = codec.decode(open(f"{stem}.h264", "rb").read()).frames
    shown = mp4_frames(open(f"{stem}.mp4", "rb").read())
    assert len(shown) >= 10
    assert all(np.array_equal(a, b) for a, b in zip(shown[:10], raw[:10]))


def test_syntax_safe_samples_decode_with_no_decoder_errors(video_run, tmp_path):
  records = _sample(video_run, tmp_path, True)
  for r in records:
    assert r["valid"] and r["decoder_errors"] == 0, r["reason"]
    assert r["frames_decoded"] > 10 and r["mp4"]


def test_eval_reports_the_video_protocol(video_run, tmp_path, capsys):
  # The held-out clip (a folder holding only it), with room to write 5 frames of an untrained
  # model's macroblocks after the prompt (the parameters do not depend on model.max_len).
  clips = tmp_path / "clips"
  clips.mkdir()
  os.symlink(HELD_OUT, clips / os.path.basename(HELD_OUT))
  out = tmp_path / "eval"
  code = main(["eval", "--workdir", video_run, "--videos", str(clips), "--num-videos", "1",
               "--frames", "10", "--out", str(out), "--config.model.max_len=2048"])
  assert code == 0
  report = json.load(open(out / "eval.json"))
  assert report["codec"] == "avc" and report["prompt_frames"] == 10
  assert len(report["video_files"]) == 1 and report["true_frames_continued"] == 5
  for mode in ("free", "syntax_safe"):
    r = report["modes"][mode]
    assert "error" not in r, r
    assert 0 <= r["valid_decode_rate"] <= 1 and math.isfinite(r["psnr"]) and 0 < r["psnr"]
    assert -1 <= r["ssim"] <= 1 and r["tokens_generated"] > 0
    assert os.path.exists(out / f"grid_{mode}.png")
  (safe,) = report["modes"]["syntax_safe"]["samples"]
  assert safe["valid"] and safe["decoder_errors"] == 0 and safe["ended_with_eos"], safe
  assert safe["frames_decoded"] == 15 and safe["frames_continued"] == 5
  base = report["baseline_repeat_last_frame"]
  assert 0 < base["psnr"] < 100 and 0 < base["ssim"] < 1
  # The eval numbers add up: bits by part sum to bits per byte.
  parts = report["bits_by_part"]
  assert set(parts) == {"parameter_sets", "slice_headers", "i_mb_data", "p_mb_data", "other",
                        "end"}
  assert sum(p["bits"] for p in parts.values()) / sum(p["bytes"] for p in parts.values()) == \
      pytest.approx(report["bits_per_byte"], rel=1e-4)
  printed = capsys.readouterr().out
  assert "valid-decode rate" in printed and "repeat last prompt frame" in printed
  assert "syntax_safe" in printed and "slice headers" in printed
