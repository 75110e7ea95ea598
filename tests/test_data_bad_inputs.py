"""A folder mixing real photos with broken and hostile files: the good ones come through."""

import os
import shutil
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_pipeline import pipeline, prepare, tokenizer_training
from data_pipeline.bad_inputs import BadInputsError
from data_pipeline.media_files import builtin_photos
from jpeglm.config_io import load_config
from tests.train_helpers import CONFIG

BAD = ("corrupt.jpg", "truncated.jpg", "empty.png", "not_an_image.png", "bomb.png",
       "truncated.png")


def png_bomb_header(width: int, height: int) -> bytes:
  """A valid PNG signature + IHDR (correct CRC) declaring a huge image, and no pixel data."""
  ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  chunk = struct.pack(">I", len(ihdr)) + b"IHDR" + ihdr
  return b"\x89PNG\r\n\x1a\n" + chunk + struct.pack(">I", zlib.crc32(chunk[4:]))


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("mixed")
  photos = [p for p in builtin_photos() if p.endswith(".jpg")][:2] + builtin_photos()[:2]
  for p in photos:
    shutil.copy(p, folder / os.path.basename(p))
  # A real photo whose extension lies about its format: content decides, so it is good.
  Image.open(builtin_photos()[0]).save(folder / "really_a_png.jpg", format="PNG")
  jpeg = open(photos[0], "rb").read()
  png = open(photos[-1], "rb").read()
  rng = np.random.default_rng(0)
  (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + rng.bytes(4000))
  (folder / "truncated.jpg").write_bytes(jpeg[:len(jpeg) // 3])
  (folder / "empty.png").write_bytes(b"")
  (folder / "not_an_image.png").write_bytes(b"just some text, not a picture\n" * 10)
  (folder / "bomb.png").write_bytes(png_bomb_header(100_000, 100_000))
  (folder / "truncated.png").write_bytes(png[:len(png) // 4])
  (folder / "notes.txt").write_text("not media: never listed")
  return folder


def folder_config(folder, **data):
  config = load_config(CONFIG)
  config.data.source = str(folder)
  config.data.eval_fraction = 0.0  # every file in the train split
  config.train.global_batch = 2
  for key, value in data.items():
    config.data[key] = value
  return config


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, mixed_folder):
  path = tmp_path_factory.mktemp("tok") / "tokenizer.model"
  return tokenizer_training.train_tokenizer_from_source(folder_config(mixed_folder), str(path))


def test_one_epoch_yields_the_good_files_and_names_the_bad(mixed_folder, tokenizer):
  documents = pipeline.encoded_documents(folder_config(mixed_folder), tokenizer, split="train",
                                         process_index=0, process_count=1, shuffle=False,
                                         repeat=False, seed=0)
  results = [documents.dataset[i] for i in range(documents.shard_size)]
  bad = {os.path.basename(r["source"]): r["error"] for r in results if "error" in r}
  good = [os.path.basename(r["source"]) for r in results if "tokens" in r]
  assert sorted(bad) == sorted(BAD)
  assert len(good) == 5 and "really_a_png.jpg" in good
  assert "empty" in bad["empty.png"] and "bomb" in bad["bomb.png"]
  assert all(name in reason for name, reason in bad.items())  # each reason names its file


def test_training_skips_counts_and_logs(mixed_folder, tokenizer, caplog):
  config = folder_config(mixed_folder, max_bad_fraction=0.6, shuffle=False)
  iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  with caplog.at_level("WARNING", logger="jpeglm.data"):
    batches = [next(iterator) for _ in range(12)]
  seen, skipped = iterator.bad_inputs()
  source, indices = pipeline.split_source(config, "train")
  order = [os.path.basename(source.items[i]) for i in indices]  # unshuffled: folder order
  assert len(order) == 11 and seen > len(order)
  assert skipped == sum(order[i % len(order)] in BAD for i in range(seen))
  assert any("bomb.png" in r.getMessage() for r in caplog.records)
  good_tokens = [t for b in batches for t in b["inputs"].ravel()]
  assert tokenizer.bos_id in good_tokens


def test_too_many_bad_files_is_a_clear_error(mixed_folder, tokenizer):
  config = folder_config(mixed_folder, max_bad_fraction=0.1)
  iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  with pytest.raises(BadInputsError, match="max_bad_fraction=0.1"):
    for _ in range(20):  # the check waits for one source's worth of files
      next(iterator)


def test_prepare_reports_the_skipped_files(mixed_folder, tokenizer, tmp_path):
  config = folder_config(mixed_folder, max_bad_fraction=0.6)
  config.tokenizer.path = tokenizer.path
  summaries = prepare.prepare(config, str(tmp_path / "out"), progress=False)
  assert [(s.split, s.files, s.documents, s.skipped) for s in summaries] == [
      ("train", 11, 5, len(BAD))]
  config.data.max_bad_fraction = 0.1
  with pytest.raises(BadInputsError):
    prepare.prepare(config, str(tmp_path / "again"), progress=False)


def test_a_source_with_no_good_file_fails_instead_of_spinning(tmp_path, tokenizer):
  # max_bad_fraction=1.0 never trips the fraction check: a whole pass without one good input
  # must still end the iterator (it used to go round the source forever).
  for name in ("a.png", "b.jpg", "c.gif"):
    (tmp_path / name).write_bytes(b"not a picture\n" * 20)
  config = folder_config(tmp_path, max_bad_fraction=1.0)
  iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  with pytest.raises(BadInputsError, match=r"none of the 3 inputs .* could be encoded; last: "
                                           r".*\.(png|jpg|gif): not an image"):
    next(iterator)
