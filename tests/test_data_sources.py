"""tfds (array_record, no TensorFlow) and prepared ArrayRecord shards as pipeline sources."""

import glob
import os
import shutil

import numpy as np
import pytest

from data_pipeline import pipeline, prepared_shards, tokenizer_training
from data_pipeline.media_files import builtin_photos
from jpeglm.cli import main as cli_main
from jpeglm.codecs import JpegCodec, open_image
from jpeglm.config_io import load_config
from jpeglm.errors import JpeglmError
from jpeglm.tokenizer import ByteTokenizer
from tests.train_helpers import CONFIG



def tiny_config(**data):
  config = load_config(CONFIG)
  config.train.global_batch = 2
  config.tokenizer.num_files = 21
  for key, value in data.items():
    config.data[key] = value
  return config


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("photos")
  for p in builtin_photos()[:6]:
    shutil.copy(p, folder / os.path.basename(p))
  return folder


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return tokenizer_training.train_tokenizer_from_source(tiny_config(), str(path))


def documents_of(config, tokenizer, split="train"):
  documents = pipeline.encoded_documents(config, tokenizer, split=split, process_index=0,
                                         process_count=1, shuffle=False, repeat=False, seed=0)
  return [documents.dataset[i] for i in range(documents.shard_size)]


def test_tfds_array_record_dataset_from_a_folder(photo_folder, tokenizer, tmp_path):
  from data_pipeline.tfds_folder import build_from_folder

  data_dir = str(tmp_path / "tfds")
  builder = build_from_folder(str(photo_folder), data_dir, "photos", eval_fraction=0.2)
  assert builder.info.splits["train"].num_examples == 5
  assert any(name.endswith(".array_record-00000-of-00001") or "array_record" in name
             for name in os.listdir(builder.data_dir))
  config = tiny_config(source="tfds:media_folder/photos:train", tfds_data_dir=data_dir,
                       eval_source="tfds:media_folder/photos:test")
  documents = documents_of(config, tokenizer)
  codec = JpegCodec(size=config.codec.size)
  assert len(documents) == 5
  for document in documents:  # the same tokens as encoding the original file directly
    expected = tokenizer.encode_document(codec.encode(open_image(document["source"])))
    np.testing.assert_array_equal(document["tokens"], expected)
  assert len(documents_of(config, tokenizer, "eval")) == 1
  batch = next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))
  assert batch["inputs"].shape == (2, config.data.seq_len)


def test_missing_tfds_dataset_is_a_clear_error(tokenizer, tmp_path):
  config = tiny_config(source="tfds:no_such_dataset:train", tfds_data_dir=str(tmp_path))
  with pytest.raises(JpeglmError, match="no_such_dataset"):
    next(pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1))


@pytest.mark.parametrize("source,workers", [("folder", "0"), ("builtin:photos", "2")])
def test_prepare_shards_hold_the_on_the_fly_documents(photo_folder, tmp_path, source, workers,
                                                      capsys):
  source = str(photo_folder) if source == "folder" else source
  out = str(tmp_path / "prepared")
  assert cli_main(["prepare", "--config", CONFIG, "--out", out, "--workers", workers,
                   "--records-per-shard", "4", f"--config.data.source={source}",
                   "--config.tokenizer.num_files=21"]) == 0
  printed = capsys.readouterr().out
  assert "train:" in printed and "0 skipped" in printed and "arrayrecord:" in printed
  tokenizer = ByteTokenizer.load(os.path.join(out, "tokenizer.model"))
  config = tiny_config(source=source)
  meta = prepared_shards.read_meta(out)
  for split in ("train", "eval"):
    expected = [d["tokens"] for d in documents_of(config, tokenizer, split)]
    paths = sorted(glob.glob(prepared_shards.shard_glob(out, split)))
    stored = prepared_shards.read_documents(paths, meta["token_dtype"])
    assert len(stored) == len(expected) > 0
    for a, b in zip(stored, expected):
      np.testing.assert_array_equal(a, b)
  train = meta["splits"]["train"]
  assert train["shards"] == -(-train["documents"] // 4)  # 4 documents per shard

  # The shards are a source: batches from them, and a tokenizer mismatch is refused.
  prepared = tiny_config(source="arrayrecord:" + prepared_shards.shard_glob(out, "train"),
                         eval_source="arrayrecord:" + prepared_shards.shard_glob(out, "eval"))
  batch = next(pipeline.make_train_iterator(prepared, tokenizer, process_index=0, process_count=1))
  assert batch["inputs"].shape == (2, prepared.data.seq_len)
  assert len(list(pipeline.make_eval_iterator(prepared, tokenizer, num_batches=1,
                                              process_index=0, process_count=1))) == 1
  smaller = tiny_config(source=str(photo_folder))
  smaller.tokenizer.vocab_size = 300
  other = tokenizer_training.train_tokenizer_from_source(smaller, str(tmp_path / "other.model"))
  assert other.serialized() != tokenizer.serialized()
  with pytest.raises(JpeglmError, match="another tokenizer"):
    pipeline.make_train_iterator(prepared, other, process_index=0, process_count=1)
