"""`make demo DEMO=video` (jpeglm.demos.video): its pieces, and the whole plumbing at a tiny
budget (3 steps at 32x32) end to end."""

import json
import os

import pytest

from jpeglm.demos import video as demo


def test_the_held_out_clip_is_the_one_training_never_reads(tmp_path):
  from data_pipeline import sources
  from data_pipeline.media_files import builtin_videos

  config = demo.demo_config(str(tmp_path), demo.TRAIN_SECONDS)
  videos = builtin_videos()
  train = [videos[i] for i in sources.split_indices(len(videos), "train",
                                                    config.data.eval_fraction)]
  clip = demo.held_out_clip(config)
  assert clip not in train and os.path.basename(clip) == "bigbuckbunny.mp4"
  assert config.data.source == "builtin:videos"


def test_the_demo_config_trains_within_its_budget_and_fits_a_prompt(tmp_path):
  config = demo.demo_config(str(tmp_path), 180.0)
  assert 60 * config.train.time_budget_minutes <= 180.0 - demo.STOP_MARGIN_SECONDS + 1e-6
  assert (config.codec.width, config.codec.height) == (64, 36)  # the tiny AVC config's clips
  assert config.model.max_len >= 2 * config.data.seq_len  # room to write 5 frames
  assert config.tokenizer.path.startswith(str(tmp_path))


@pytest.mark.slow
def test_the_demo_runs_end_to_end_at_a_tiny_budget(tmp_path, capsys):
  overrides = {"codec.width": 32, "codec.height": 32, "data.seq_len": 256,
               "model.max_len": 1024, "train.steps": 3, "train.checkpoint_every": 3,
               "train.log_every": 1, "tokenizer.num_files": 4, "tokenizer.vocab_size": 320,
               "model.vocab_size": 320, "train.global_batch": 8}  # 8 rows: 8 fake devices
  summary = demo.main(str(tmp_path), train_seconds=120.0, num_samples=1, overrides=overrides)
  out = tmp_path / "video"
  assert json.load(open(out / "summary.json"))["samples"].keys() == summary["samples"].keys()
  assert summary["train"]["step"] == 3 and summary["data"]["round_trip"]
  for mode in ("free", "syntax_safe"):
    m = summary["samples"][mode]
    assert "error" not in m, m
    assert m["total"] == 1 and 0 <= m["valid"] <= 1 and m["frames_decoded"][0] >= 10
    assert os.path.exists(out / "samples" / mode / "grid.png")
    assert os.path.exists(out / "samples" / mode / "sample_000.mp4")
  base = summary["samples"]["baseline_repeat_last_frame"]
  assert 0 < base["psnr"] < 100
  parts = summary["held_out_bits_by_part"]
  total = sum(p["bits"] for p in parts.values()) / sum(p["bytes"] for p in parts.values())
  assert total == pytest.approx(summary["held_out_bits_per_byte"], rel=1e-4)
  printed = capsys.readouterr().out
  assert "== video demo ==" in printed and "valid streams: free" in printed
  assert "repeating the last prompt frame" in printed
