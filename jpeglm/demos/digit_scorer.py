"""The digits demo's judge: a classifier of real handwritten digits that reads the samples.

It is trained only on held-out digits that the LM never saw (jpeglm.demos.digits.Splits), as
they look after the demo's JPEG round trip. Each digit is deskewed (its slant, from its second
moments, sheared upright about its centre of mass). Two RBF support-vector classifiers with
Platt probabilities (libsvm's pairwise coupling) read it, one from its histogram of oriented
gradients (scikit-image HOG: 9 orientations, 7x7-pixel cells, 2x2-cell blocks), one from its
pixels, and their probabilities are averaged: on real digits the two views agree, on
textures they do not, so a texture that one view takes for a digit is not called confident
(alone, each view called 2 of 32 texture samples of a 145-s model confident "8"s). The
training digits are joined by their copies shifted one pixel up, down, left and right.

A fifth of the held-out digits is kept back from the fit to show how the scorer reads real
digits it has not seen: the ceiling for the samples' scores. `tests/test_digit_scorer.py`
checks that it stays a strict judge: it must not call noise textures confident digits.
"""

from __future__ import annotations

import warnings

import numpy as np
from PIL import Image
from scipy import ndimage

CONFIDENT = 0.9
SHIFTS = ((1, 0), (-1, 0), (0, 1), (0, -1))


def deskew(pixels_HxW: np.ndarray) -> np.ndarray:
  """The digit sheared so its main axis is vertical, its centre of mass at the image centre."""
  mass = float(pixels_HxW.sum())
  if mass <= 0.0:
    return pixels_HxW
  h, w = pixels_HxW.shape
  rows, cols = np.mgrid[:h, :w]
  cy = float((rows * pixels_HxW).sum()) / mass
  cx = float((cols * pixels_HxW).sum()) / mass
  var_rows = float(((rows - cy) ** 2 * pixels_HxW).sum()) / mass
  cov = float(((rows - cy) * (cols - cx) * pixels_HxW).sum()) / mass
  slant = cov / var_rows if var_rows > 1e-6 else 0.0
  # Output (r, c) reads input (r, c + slant * r) about the centres.
  shear = np.array([[1.0, 0.0], [slant, 1.0]])
  offset = np.array([cy, cx]) - shear @ np.array([(h - 1) / 2.0, (w - 1) / 2.0])
  return ndimage.affine_transform(pixels_HxW, shear, offset=offset, order=1, mode="constant")


def features(pixels_NxHxW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(HOG descriptors [N, F], pixels [N, H*W]) of the deskewed digits."""
  from skimage.feature import hog

  upright = [deskew(p) for p in pixels_NxHxW]
  return (np.stack([hog(p, orientations=9, pixels_per_cell=(7, 7), cells_per_block=(2, 2))
                    for p in upright]),
          np.stack([p.ravel() for p in upright]))


def to_pixels(image: Image.Image | None, side: int) -> np.ndarray:
  """[side, side] float32 in [0, 1]; a missing image (nothing decoded) is a grey square."""
  if image is None:
    return np.full((side, side), 0.5, np.float32)
  return np.asarray(image.convert("L").resize((side, side)), np.float32) / 255.0


def shifted(pixels_NxHxW: np.ndarray, labels_N: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """The digits and their one-pixel shifts (the background is black, so rolling is a shift)."""
  copies = [pixels_NxHxW] + [np.roll(pixels_NxHxW, (dy, dx), axis=(1, 2)) for dy, dx in SHIFTS]
  return np.concatenate(copies), np.tile(labels_N, len(copies))


class DigitScorer:
  """Reads images as digits with a confidence; `real_accuracy` and `real_confident` say how it
  reads the real digits it kept back."""

  def __init__(self, pixels_NxHxW: np.ndarray, labels_N: np.ndarray, seed: int = 0):
    from sklearn.svm import SVC

    self.side = pixels_NxHxW.shape[1]
    order = np.random.default_rng(seed).permutation(len(labels_N))
    check, fit = order[:len(labels_N) // 5], order[len(labels_N) // 5:]
    x, y = shifted(pixels_NxHxW[fit], labels_N[fit])
    with warnings.catch_warnings():
      # scikit-learn 1.9 deprecates probability=True for CalibratedClassifierCV, whose
      # one-vs-rest sigmoids are not libsvm's pairwise coupling; this keeps the latter.
      warnings.simplefilter("ignore", FutureWarning)
      self.models = [SVC(C=5.0, probability=True, random_state=seed).fit(view, y)
                     for view in features(x)]
    probs = self.probabilities(pixels_NxHxW[check])
    self.real_accuracy = float(np.mean(probs.argmax(1) == labels_N[check]))
    self.real_confident = float(np.mean(probs.max(1) >= CONFIDENT))
    self.num_train, self.num_check = len(fit), len(check)

  def probabilities(self, pixels_NxHxW: np.ndarray) -> np.ndarray:
    """[N, 10]: the two views' probabilities, averaged."""
    views = features(pixels_NxHxW)
    return np.mean([m.predict_proba(v) for m, v in zip(self.models, views)], axis=0)

  def read_pixels(self, pixels_NxHxW: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = self.probabilities(pixels_NxHxW)
    return probs.argmax(1), probs.max(1)

  def read(self, images: list[Image.Image | None]) -> tuple[np.ndarray, np.ndarray]:
    """(digit, confidence) per image."""
    return self.read_pixels(np.stack([to_pixels(im, self.side) for im in images]))
