"""The digits demo's scorer reads real held-out digits well and stays a strict judge."""

import glob
import os

import numpy as np
import pytest
from PIL import Image
from scipy import fft

from jpeglm.demos import digits as demo_digits
from jpeglm.codecs import make_codec
from jpeglm.config_io import load_config
from jpeglm.demos.digit_scorer import CONFIDENT, DigitScorer, deskew, to_pixels

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLES = os.path.join(ROOT, "tests", "data", "digit_noise_samples")
# The 32 syntax-safe unconditional samples of a 635-step demo run (2026-11-26): DCT-basis
# textures in the digits' JPEG stream, not digits. And two texture blobs of a 295-step run
# (temperature 0.8, top-k 4) that the HOG view alone called "8" with confidence 0.91, 0.93.
NOISE = sorted(glob.glob(os.path.join(SAMPLES, "sample_*.jpg")))
FOOLED_ONE_VIEW = sorted(glob.glob(os.path.join(SAMPLES, "one_view_fooled_*.jpg")))


@pytest.fixture(scope="module")
def scorer_and_check():
  config = load_config(os.path.join(ROOT, "configs", "digits.py"))
  codec = make_codec(config.codec)
  splits = demo_digits.Splits(config)
  pixels = np.stack([to_pixels(codec.decode(codec.encode(splits.images[i])).image, codec.size)
                     for i in splits.scorer])
  labels = splits.labels[splits.scorer]
  # A quick scorer on 300 of the scorer's digits (in label order on file: shuffled); the
  # other held-out ones check it.
  order = np.random.default_rng(0).permutation(len(labels))
  pixels, labels = pixels[order], labels[order]
  scorer = DigitScorer(pixels[:300], labels[:300])
  return scorer, pixels[300:], labels[300:]


def test_reads_real_digits_it_never_saw(scorer_and_check):
  scorer, pixels, labels = scorer_and_check
  read, confidence = scorer.read_pixels(pixels)
  assert np.mean(read == labels) > 0.9
  confident = confidence >= CONFIDENT
  assert confident.mean() > 0.4
  assert np.mean(read[confident] == labels[confident]) > 0.97  # confident means right
  assert 0.85 < scorer.real_accuracy <= 1.0 and scorer.num_check == 60


def test_noise_is_not_a_confident_digit(scorer_and_check):
  scorer, _, _ = scorer_and_check
  assert len(NOISE) == 32 and len(FOOLED_ONE_VIEW) == 2
  samples = [Image.open(path) for path in NOISE + FOOLED_ONE_VIEW]
  rng = np.random.default_rng(0)
  # DCT-basis textures like the samples': random coefficients in a few 8x8 blocks.
  textures = np.zeros((32, 32, 32), np.float32)
  for t in textures:
    for by, bx in rng.integers(0, 4, (6, 2)):
      coefficients = np.zeros((8, 8))
      coefficients[tuple(rng.integers(0, 8, (2, 4)))] = rng.normal(0, 4, 4)
      t[8 * by:8 * by + 8, 8 * bx:8 * bx + 8] = fft.idctn(coefficients, norm="ortho")
  textures = np.clip(textures[:, :28, :28], 0, 1)
  flat = np.stack([np.zeros((28, 28)), np.full((28, 28), 0.5), rng.uniform(0, 1, (28, 28))])
  for name, pixels in (("demo samples", np.stack([to_pixels(s, 28) for s in samples])),
                       ("DCT textures", textures), ("flat and noise", flat.astype(np.float32))):
    _, confidence = scorer.read_pixels(pixels)
    assert confidence.max() < CONFIDENT, name


def test_deskew_uprights_a_slanted_stroke():
  stroke = np.zeros((28, 28), np.float32)
  for r in range(4, 24):
    stroke[r, 6 + (r - 4) // 2: 9 + (r - 4) // 2] = 1.0  # leans right going down
  upright = deskew(stroke)
  columns = [np.average(np.arange(28), weights=row) for row in upright if row.sum() > 0.5]
  assert np.ptp(columns) < 2.0 < np.ptp([np.average(np.arange(28), weights=row)
                                          for row in stroke if row.sum() > 0])
