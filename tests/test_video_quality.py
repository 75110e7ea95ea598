"""PSNR / SSIM of continued frames (jpeglm.evaluation.video_quality) on real decoded frames:
the SSIM is the standard one, and the baseline and missing frames are scored as documented."""

import math

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from data_pipeline.media_files import builtin_videos
from jpeglm.codecs import AvcCodec
from jpeglm.evaluation import video_quality


@pytest.fixture(scope="module")
def frames():
  codec = AvcCodec(width=64, height=36)
  return codec.decode(codec.encode(builtin_videos()[1])).frames


def _reference_ssim(a, b):
  """Wang et al. (2004) written out: luma, 11-tap Gaussian of sigma 1.5, K1 0.01, K2 0.03."""
  x, y = (f.astype(np.float64) @ [0.299, 0.587, 0.114] for f in (a, b))
  blur = lambda z: gaussian_filter(z, 1.5, truncate=3.5, mode="reflect")  # radius 5: 11 taps
  mx, my = blur(x), blur(y)
  vx, vy, cxy = blur(x * x) - mx * mx, blur(y * y) - my * my, blur(x * y) - mx * my
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
  return s[5:-5, 5:-5].mean()  # the border where the window leaves the image is left out


def test_ssim_is_the_standard_gaussian_window_ssim(frames):
  for a, b in ((frames[0], frames[3]), (frames[10], frames[14])):
    assert video_quality.ssim([a], [b]) == pytest.approx(_reference_ssim(a, b), abs=1e-6)
  assert video_quality.ssim(frames[:3], frames[:3]) == pytest.approx(1.0)


def test_psnr_of_a_known_error_and_of_identical_frames(frames):
  noisy = np.clip(frames[2].astype(int) + 10, 0, 255).astype(np.uint8)
  mse = np.mean((noisy.astype(float) - frames[2]) ** 2)
  assert video_quality.psnr([noisy], [frames[2]]) == pytest.approx(10 * math.log10(255 ** 2 / mse))
  assert video_quality.psnr(frames, frames) == video_quality.PSNR_CAP


def test_continuation_scores_and_the_repeat_baseline(frames):
  perfect = video_quality.continuation_scores(frames, frames, 10)
  assert perfect["psnr"] == video_quality.PSNR_CAP and perfect["ssim"] == pytest.approx(1.0)
  assert perfect["frames_continued"] == 5
  repeated = [frames[9]] * 5
  baseline = video_quality.baseline_scores(frames, 10)
  assert baseline["psnr"] == pytest.approx(video_quality.psnr(repeated, frames[10:]))
  assert baseline["ssim"] < 1.0  # bikes moves
  # A sample that stops after 12 frames: the last 3 are scored as grey frames.
  short = video_quality.continuation_scores(frames[:12], frames, 10)
  grey = np.full(frames[0].shape, video_quality.GREY, np.uint8)
  assert short["frames_continued"] == 2
  assert short["psnr"] == pytest.approx(video_quality.psnr(frames[10:12] + [grey] * 3, frames[10:]))
  assert short["ssim"] < perfect["ssim"]
