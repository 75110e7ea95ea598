"""builtin:videos through the pipeline: frames -> AvcCodec (H.264 Annex-B) -> tokens -> rows."""

import numpy as np
import pytest

from data_pipeline import pipeline, tokenizer_training
from jpeglm.codecs import AvcCodec
from jpeglm.config_io import load_config
from tests.train_helpers import CONFIG as TINY

CONFIG = f"{TINY},codec=avc"


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
  config = load_config(CONFIG)
  config.tokenizer.num_files = 4
  config.tokenizer.vocab_size = 320  # a few tiny clips hold too few pairs for 1024 merges
  config.train.global_batch = 2
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return config, tokenizer_training.train_tokenizer_from_source(config, str(path))


def test_video_documents_are_h264_streams(setup):
  config, tokenizer = setup
  documents = pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                                         process_count=1, shuffle=False, repeat=True, seed=0)
  codec = AvcCodec(width=config.codec.width, height=config.codec.height, fps=config.codec.fps,
                   seconds=config.codec.seconds, qp=config.codec.qp)
  for i in range(documents.shard_size):
    tokens = documents.dataset[i]["tokens"]
    assert tokens[0] == tokenizer.bos_id and tokens[-1] == tokenizer.eos_id
    stream = tokenizer.decode(tokens)
    assert stream.startswith(b"\x00\x00\x00\x01") or stream.startswith(b"\x00\x00\x01")
    decoded = codec.decode(stream)
    assert decoded.complete, decoded.reason
  # Built-in clips are augmented: the next epoch crops the same clip differently.
  again = documents.dataset[documents.shard_size]
  assert again["source"] == documents.dataset[0]["source"]
  assert not np.array_equal(again["tokens"], documents.dataset[0]["tokens"])


def test_video_batches(setup):
  config, tokenizer = setup
  batch = next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))
  assert batch["inputs"].shape == (2, config.data.seq_len) == (2, 1024)
  assert (batch["target_bytes"] > 0).all()
