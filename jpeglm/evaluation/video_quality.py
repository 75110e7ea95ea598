"""PSNR and SSIM of continued video frames against the true ones.

SSIM is Wang et al. (2004) as usually reported: on luma (BT.601), an 11x11 Gaussian window
of sigma 1.5, K1 = 0.01, K2 = 0.03, population covariances (scikit-image's implementation,
already a dependency). PSNR is over the RGB pixels, from the mean squared error of all the
frames of a clip; identical frames score PSNR_CAP rather than infinity, so that means stay
finite. A frame the sample does not have is compared as a mid-grey frame: a continuation
that fails to decode scores badly rather than dropping out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from skimage.metrics import structural_similarity

PSNR_CAP = 100.0
GREY = 128


def _luma(frame: np.ndarray) -> np.ndarray:
  return frame[..., :3].astype(np.float64) @ np.array([0.299, 0.587, 0.114])


def psnr(frames: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
  """Peak signal-to-noise ratio (dB) of `frames` against `truth`, uint8 RGB of one size."""
  mse = float(np.mean([np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
                       for a, b in zip(frames, truth, strict=True)]))
  return PSNR_CAP if mse == 0 else min(PSNR_CAP, 10 * math.log10(255.0 ** 2 / mse))


def ssim(frames: Sequence[np.ndarray], truth: Sequence[np.ndarray]) -> float:
  """Mean SSIM over the frames (luma, Gaussian window)."""
  return float(np.mean([
      structural_similarity(_luma(a), _luma(b), data_range=255.0, gaussian_weights=True,
                            sigma=1.5, use_sample_covariance=False)
      for a, b in zip(frames, truth, strict=True)]))


def padded(frames: Sequence[np.ndarray], count: int, shape: tuple[int, ...]) -> list[np.ndarray]:
  """The first `count` frames, grey frames of `shape` where there are fewer."""
  grey = np.full(shape, GREY, np.uint8)
  kept = [f if f.shape == shape else grey for f in frames[:count]]  # a damaged SPS's odd size
  return kept + [grey] * (count - len(kept))


def _future(truth: Sequence[np.ndarray], prompt_frames: int) -> list[np.ndarray]:
  future = list(truth[prompt_frames:])
  if not future or prompt_frames < 1:
    raise ValueError(f"{len(truth)} true frames leave none to continue after {prompt_frames}")
  return future


def continuation_scores(decoded: Sequence[np.ndarray], truth: Sequence[np.ndarray],
                        prompt_frames: int) -> dict[str, float]:
  """PSNR/SSIM of a sample's frames after the prompt against the true ones."""
  future = _future(truth, prompt_frames)
  continued = padded(list(decoded[prompt_frames:]), len(future), future[0].shape)
  return {"psnr": psnr(continued, future), "ssim": ssim(continued, future),
          "frames_continued": min(max(len(decoded) - prompt_frames, 0), len(future))}


def baseline_scores(truth: Sequence[np.ndarray], prompt_frames: int) -> dict[str, float]:
  """PSNR/SSIM of the baseline that repeats the last prompt frame (the true one, as the
  decoder shows it): once per clip, whatever its samples."""
  future = _future(truth, prompt_frames)
  repeated = [truth[prompt_frames - 1]] * len(future)
  return {"psnr": psnr(repeated, future), "ssim": ssim(repeated, future)}
