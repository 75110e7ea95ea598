"""Bits by JPEG stream part: every byte gets its part, and the parts add up to the model's
bits per byte."""

import os

import numpy as np

from data_pipeline import digits as digits_lib
from data_pipeline.media_files import builtin_photos
from jpeglm.codecs import JpegCodec, make_codec, open_image
from jpeglm.codecs import jpeg_stream
from jpeglm.config_io import read_config
from jpeglm.evaluation import stream_parts
from jpeglm.evaluation.bits_per_byte import bits_per_byte, token_bits
from jpeglm.sampling.run import load_run

PARTS = stream_parts.PARTS


def test_every_byte_of_a_digit_stream_has_its_part():
  codec = JpegCodec(size=28, color="gray")
  images, _ = digits_lib.load_digits()
  stream = codec.encode(images[0])
  parts = stream_parts.byte_parts(stream)
  header = jpeg_stream.parse_header(stream, 1 << 20)
  count = lambda name: int(np.sum(parts == PARTS.index(name)))
  assert count("header") == header.scan_start
  assert count("markers") == 2 * (header.num_mcus - 1)  # an RST between MCUs
  assert count("end") == 2 and stream.endswith(b"\xff\xd9")  # EOI
  assert count("flat_mcus") + count("detailed_mcus") == len(stream) - header.scan_start - \
      2 * (header.num_mcus - 1) - 2
  # A digit: black background blocks (flat) around the strokes (detailed).
  assert count("flat_mcus") > 0 and count("detailed_mcus") > count("flat_mcus")
  blank = codec.encode(np.zeros((28, 28), np.uint8))
  assert np.sum(stream_parts.byte_parts(blank) == PARTS.index("detailed_mcus")) == 0


def test_bits_by_part_add_up_to_bits_per_byte(trained_run):
  config = read_config(os.path.join(trained_run, "config.json"))
  run = load_run(trained_run, config)
  codec = make_codec(config.codec)
  streams = [codec.encode(open_image(p)) for p in builtin_photos()[:3]]
  bits = token_bits(config, run.params, run.tokenizer, streams)
  assert [len(b) for b in bits] == [len(run.tokenizer.encode(s)) + 1 for s in streams]
  parts = stream_parts.bits_by_part(run.tokenizer, streams, bits)
  assert set(parts) == set(PARTS)
  total_bits = sum(p["bits"] for p in parts.values())
  total_bytes = sum(p["bytes"] for p in parts.values())
  assert total_bytes == sum(len(s) for s in streams) / len(streams)
  np.testing.assert_allclose(total_bits / total_bytes,
                             bits_per_byte(config, run.params, streams, run.tokenizer),
                             rtol=1e-4)
  assert parts["detailed_mcus"]["bytes"] > parts["header"]["bytes"] > 0
