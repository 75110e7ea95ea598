"""Samples while training: a short run on real digits writes sample grids that TensorBoard's
event format holds, image files under samples/step_N/, and the valid-decode rate."""

import glob
import io
import json
import os
import struct

import numpy as np
import pytest
from PIL import Image
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from jpeglm.config_io import load_config
from jpeglm.errors import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "digits.py")


def read_events(path: str) -> list[event_pb2.Event]:
  """TFRecord framing (length, masked CRC-32C of it, payload, masked CRC-32C of it) of an
  event file, each CRC checked, each payload parsed as TensorBoard's Event protobuf."""
  events = []
  with open(path, "rb") as f:
    data = f.read()
  i = 0
  while i < len(data):
    header = data[i:i + 8]
    (length,) = struct.unpack("<Q", header)
    assert struct.unpack("<I", data[i + 8:i + 12])[0] == masked_crc32c(header)
    payload = data[i + 12:i + 12 + length]
    assert struct.unpack("<I", data[i + 12 + length:i + 16 + length])[0] == masked_crc32c(payload)
    events.append(event_pb2.Event.FromString(payload))
    i += 16 + length
  return events


def tiny_digits_config(tmp_path, **train):
  from data_pipeline.tokenizer_training import train_tokenizer_from_source

  overrides = {"model.d_model": 32, "model.n_layers": 1, "model.n_heads": 2,
               "model.n_kv_heads": 2, "model.d_ff": 64, "data.seq_len": 128, "model.max_len": 128,
               "train.global_batch": 8, "train.steps": 2, "train.log_every": 1,
               "train.eval_every": 0, "train.checkpoint_every": 2, "train.warmup_steps": 1,
               "tokenizer.num_files": 200, **train}
  config = load_config(CONFIG, [f"--config.{k}={v}" for k, v in overrides.items()])
  path = str(tmp_path / "tokenizer.model")
  train_tokenizer_from_source(config, path)
  config.tokenizer.path = path
  return config


@pytest.mark.slow  # ~45 s on the loaded 2-core machine: a run, then 12 syntax-safe samples
def test_training_writes_sample_grids_tensorboard_can_read(tmp_path):
  from jpeglm.train import train_and_evaluate
  from jpeglm.training.samples import NUM_PROMPTS, NUM_UNCONDITIONAL

  config = tiny_digits_config(tmp_path, **{"train.sample_every": 2})
  workdir = str(tmp_path / "run")
  train_and_evaluate(config, workdir)

  folder = os.path.join(workdir, "samples", "step_2")
  with open(os.path.join(folder, "samples.jsonl")) as f:
    records = [json.loads(line) for line in f]
  assert len(records) == NUM_UNCONDITIONAL + NUM_PROMPTS
  assert [r["kind"] for r in records].count("completion") == NUM_PROMPTS
  jpegs = sorted(glob.glob(os.path.join(folder, "sample_*.jpg")))
  assert len(jpegs) == len(records)
  for path in jpegs:  # standalone JPEGs any viewer opens: 28x28, one component
    with Image.open(path) as image:
      image.load()
      assert image.size == (28, 28) and image.mode == "L"
  grid = np.asarray(Image.open(os.path.join(folder, "grid.png")).convert("RGB"))
  assert grid.shape[0] > 64 * (1 + NUM_PROMPTS) and grid.shape[1] >= 64 * NUM_UNCONDITIONAL

  (event_file,) = glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
  images, scalars = {}, {}
  for event in read_events(event_file):
    for value in event.summary.value:
      if value.HasField("image"):
        images[(value.tag, event.step)] = value.image
      elif value.HasField("simple_value"):
        scalars[(value.tag, event.step)] = value.simple_value
  summary = images[("samples/grid", 2)]
  decoded = np.asarray(Image.open(io.BytesIO(summary.encoded_image_string)).convert("RGB"))
  assert (summary.height, summary.width) == grid.shape[:2]
  assert np.array_equal(decoded, grid)  # the same picture as samples/step_2/grid.png
  rate = scalars[("samples_valid_rate", 2)]
  assert rate == pytest.approx(np.mean([r["complete"] for r in records]))
  assert ("loss", 1) in scalars  # the trainer's own scalars sit in the same file


def test_prompts_are_spread_over_the_held_out_digits():
  from data_pipeline import digits, sources
  from jpeglm.codecs import JpegCodec
  from jpeglm.training.samples import held_out_streams

  config = load_config(CONFIG)
  images, labels = digits.load_digits()
  held_out = sources.split_indices(len(labels), "eval", config.data.eval_fraction)
  codec = JpegCodec(size=28, color="gray")
  streams = held_out_streams(config, 4)
  assert streams == [codec.encode(images[held_out[i]]) for i in (0, 333, 666, 999)]
  assert labels[held_out[[0, 333, 666, 999]]].tolist() == [0, 3, 6, 9]


def test_sample_every_needs_jpeg(tmp_path):
  from jpeglm.training.metrics_log import MetricsLog
  from jpeglm.training.samples import TrainSamples

  config = load_config(os.path.join(ROOT, "configs", "jpeglm.py") + ":size=tiny,codec=avc",
                       ["--config.train.sample_every=5"])
  with pytest.raises(ConfigError, match="sample_every"):
    TrainSamples(config, str(tmp_path), None, MetricsLog(str(tmp_path), enabled=False))
