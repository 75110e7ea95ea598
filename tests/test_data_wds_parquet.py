"""Streaming sources as datasets are shipped: WebDataset tars (`wds:`), Hugging Face parquet
(`parquet:`), fsspec URLs, and files too slow to decode (`data.max_seconds_per_file`).

The shards are built here from the real photos and videos inside installed wheels, written
the way img2dataset / video2dataset and Hugging Face datasets write them, with damaged
members, rows and row groups among them."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import time

import fsspec
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from data_pipeline import (parquet_source, pipeline, prepare, prepared_shards, sources, streaming,
                           wds_source)
from data_pipeline.media_files import builtin_photos, builtin_videos
from jpeglm.config_io import load_config
from jpeglm.errors import JpeglmError
from jpeglm.tokenizer import ByteTokenizer
from tests.train_helpers import CONFIG

PHOTOS_PER_SHARD = 4


def jpeg_bytes(path: str, side: int = 96) -> bytes:
  image = Image.open(path).convert("RGB")
  image.thumbnail((side, side))
  out = io.BytesIO()
  image.save(out, "JPEG", quality=90)
  return out.getvalue()


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
  info = tarfile.TarInfo(name)
  info.size = len(data)
  info.mtime = 0
  tar.addfile(info, io.BytesIO(data))


def write_wds_shard(path, samples: list[tuple[str, bytes]], ext: str = "jpg",
                    truncate_last: bool = False) -> None:
  """img2dataset's layout: KEY.jpg, KEY.json, KEY.txt per sample, in key order."""
  with tarfile.open(path, "w") as tar:
    for key, data in samples:
      add_member(tar, f"{key}.{ext}", data)
      add_member(tar, f"{key}.json", json.dumps({"key": key, "status": "success"}).encode())
      add_member(tar, f"{key}.txt", f"caption of {key}".encode())
  if truncate_last:  # the last media member is cut in the middle (an interrupted upload)
    with tarfile.open(path) as tar:
      last = [m for m in tar.getmembers() if m.name.endswith(f".{ext}")][-1]
    with open(path, "r+b") as f:
      f.truncate(last.offset_data + last.size // 2)


@pytest.fixture(scope="module")
def photo_bytes():
  return [jpeg_bytes(p) for p in builtin_photos()[:3 * PHOTOS_PER_SHARD]]


@pytest.fixture(scope="module")
def wds_dir(tmp_path_factory, photo_bytes):
  """3 shards of 4 samples; shard 1 has a corrupt jpg, shard 2 a truncated final member."""
  folder = tmp_path_factory.mktemp("wds")
  for shard in range(3):
    samples = [(f"{shard:05d}{i:04d}", photo_bytes[shard * PHOTOS_PER_SHARD + i])
               for i in range(PHOTOS_PER_SHARD)]
    if shard == 1:
      samples[2] = (samples[2][0], b"\xff\xd8\xff\xe0 not really a jpeg")
    write_wds_shard(folder / f"{shard:05d}.tar", samples, truncate_last=shard == 2)
  return folder


def hf_image(data: bytes | None, path: str) -> dict:
  return {"bytes": data, "path": path}


@pytest.fixture(scope="module")
def parquet_dir(tmp_path_factory, photo_bytes):
  """2 files with Hugging Face's image struct, 2 rows per row group; an empty row, a corrupt
  image, and in file 1 a row group whose page header is destroyed."""
  folder = tmp_path_factory.mktemp("parquet")
  for part in range(2):
    images = [hf_image(photo_bytes[part * 6 + i], f"photo{part}_{i}.jpg") for i in range(6)]
    if part == 0:
      images[1] = hf_image(None, "missing.jpg")
      images[4] = hf_image(b"garbage", "garbage.jpg")
    table = pa.table({"image": images, "text": [f"caption {i}" for i in range(6)]})
    path = folder / f"train-{part:05d}-of-00002.parquet"
    pq.write_table(table, path, row_group_size=2, compression="none")
    if part == 1:
      chunk = pq.ParquetFile(path).metadata.row_group(1).column(0)
      with open(path, "r+b") as f:
        f.seek(chunk.data_page_offset)
        f.write(b"\xff" * 24)
  return folder


@pytest.fixture(scope="module")
def tokenizer(tokenizer_path):
  return ByteTokenizer.load(tokenizer_path)


def tiny_config(source: str, **data):
  config = load_config(CONFIG)
  config.train.global_batch = 2
  config.data.seq_len = 128
  config.model.max_len = 128
  config.data.source = source
  config.data.shuffle_buffer = 6
  config.data.max_bad_fraction = 0.5  # the shards here are a third bad on purpose
  for key, value in data.items():
    config.data[key] = value
  return config


def stream_documents(config, tokenizer, process_index=0, process_count=1, split="train"):
  documents = pipeline.encoded_documents(
      config, tokenizer, split=split, process_index=process_index, process_count=process_count,
      shuffle=False, repeat=False, seed=0)
  assert documents.shard_size is None
  return list(iter(documents.dataset))


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


# ---- readers ----------------------------------------------------------------------------


def test_tar_reader_takes_media_members_and_reports_a_truncated_one(wds_dir):
  reader = wds_source.TarReader("image")
  items = list(reader(str(wds_dir / "00002.tar")))
  assert [os.path.basename(i["name"]) for i in items] == [
      "000020000.jpg", "000020001.jpg", "000020002.jpg", "000020003.jpg"]
  assert all("data" in i for i in items[:3]) and items[3]["data" if False else "error"]
  assert "unreadable tar shard" in items[3]["error"] and "000020003.jpg" in items[3]["error"]
  # Resuming inside a shard gives the same items from that position on.
  assert list(reader(str(wds_dir / "00002.tar"), 2)) == items[2:]
  assert list(reader(str(wds_dir / "00002.tar"), 4)) == []
  # Not a tar at all: one error naming the file.
  (bad,) = list(reader(str(wds_dir.parent / "does-not-exist.tar")))
  assert "does-not-exist.tar" in bad["error"]


def test_parquet_reader_reads_the_hf_image_struct_and_skips_bad_rows(parquet_dir):
  paths = sorted(str(p) for p in parquet_dir.iterdir())
  reader = parquet_source.ParquetReader("", "image")
  first, second = list(reader(paths[0])), list(reader(paths[1]))
  assert len(first) == len(second) == 6  # one item per row, readable or not
  assert first[1]["error"].endswith("#1 (missing.jpg): no media bytes in this row")
  assert [i["name"] for i in first] == reader.names(paths[0])  # file#row: what splits hash
  assert first[4]["data"] == b"garbage"  # bytes are read; the encoder rejects them later
  assert [("error" in i) for i in second] == [False, False, True, True, False, False]
  assert "unreadable row group 1" in second[2]["error"]
  assert list(reader(paths[1], 3)) == second[3:]
  assert parquet_source.split_spec("gs://b/x/*.parquet:image") == ("gs://b/x/*.parquet", "image")
  assert parquet_source.split_spec("gs://b/x/*.parquet") == ("gs://b/x/*.parquet", "")
  with pytest.raises(JpeglmError, match="has no column 'img'"):
    list(parquet_source.ParquetReader("img", "image")(paths[0]))
  with pytest.raises(JpeglmError, match="holds string"):
    list(parquet_source.ParquetReader("text", "image")(paths[0]))


# ---- the pipeline -----------------------------------------------------------------------


def test_wds_documents_skip_bad_members_by_the_skip_path(wds_dir, tokenizer):
  config = tiny_config(f"wds:{wds_dir}/*.tar", eval_fraction=0.0)
  documents = stream_documents(config, tokenizer)
  assert len(documents) == 12
  errors = [d for d in documents if "error" in d]
  assert len(errors) == 2  # the corrupt jpg and the truncated final member
  assert any("000010002.jpg" in e["error"] for e in errors)
  assert any("000020003.jpg" in e["error"] for e in errors)
  for document in documents:
    if "tokens" in document:
      assert document["tokens"][0] == tokenizer.bos_id and document["tokens"][-1] == tokenizer.eos_id


@pytest.mark.parametrize("kind", ["wds", "parquet"])
def test_stream_resumes_with_exactly_the_same_batches(kind, wds_dir, parquet_dir, tokenizer):
  source = f"wds:{wds_dir}/*.tar" if kind == "wds" else f"parquet:{parquet_dir}/*.parquet:image"
  config = tiny_config(source, eval_fraction=0.0, max_bad_fraction=0.5)  # 4 of 12 are bad
  straight_it = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  straight = take(straight_it, 60)
  seen, skipped = straight_it.bad_inputs()
  assert seen > 24 and skipped >= 4  # past two epochs: the bad items were met and skipped
  first = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  take(first, 25)
  state = first.get_state()
  resumed = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  resumed.set_state(json.loads(json.dumps(state)))
  for want, got in zip(straight[25:], take(resumed, 35)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])
  assert resumed.bad_inputs() == (seen, skipped)
  # A new epoch order and shuffle: the stream is not the unshuffled one.
  plain = take(pipeline.make_train_iterator(tiny_config(source, eval_fraction=0.0, shuffle=False,
                                                       max_bad_fraction=0.5),
                                            tokenizer, process_index=0, process_count=1), 60)
  assert any(not np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(straight, plain))


def test_two_processes_read_disjoint_shards(wds_dir, tokenizer):
  config = tiny_config(f"wds:{wds_dir}/*.tar", eval_fraction=0.0)
  shards = [{d["source"].rsplit("/", 1)[0] for d in stream_documents(config, tokenizer, i, 2)}
            for i in range(2)]
  assert not shards[0] & shards[1]
  assert shards[0] | shards[1] == {str(p) for p in wds_dir.iterdir()}
  # 3 shards over 2 processes: 2 + 1. Over 4 processes each reads all 3 and keeps every
  # 4th item: together every item once, none refused.
  assert sorted(len(s) for s in shards) == [1, 2]
  alone = [d["source"] for d in stream_documents(config, tokenizer)]
  fourths = [[d["source"] for d in stream_documents(config, tokenizer, i, 4)] for i in range(4)]
  assert all(fourths) and sorted(sum(fourths, [])) == sorted(alone)


def test_eval_split_holds_out_items_by_name_the_same_under_any_sharding(wds_dir, tokenizer):
  config = tiny_config(f"wds:{wds_dir}/*.tar", eval_fraction=0.3)
  train = [d["source"] for d in stream_documents(config, tokenizer)]
  held = [d["source"] for d in stream_documents(config, tokenizer, split="eval")]
  everything = [d["source"] for d in stream_documents(tiny_config(f"wds:{wds_dir}/*.tar",
                                                                  eval_fraction=0.0), tokenizer)]
  assert held and train and not set(train) & set(held)
  assert sorted(train + held) == sorted(everything)
  # Items, not shards: a shard gives to both splits.
  assert {h.rsplit("/", 1)[0] for h in held} & {s.rsplit("/", 1)[0] for s in train}
  # Two processes (and a copy of the shards elsewhere) hold out the same items.
  two = [d["source"] for i in range(2) for d in stream_documents(config, tokenizer, i, 2,
                                                                 split="eval")]
  assert sorted(two) == sorted(held)


@pytest.mark.parametrize("kind", ["wds", "parquet"])
def test_split_counts_from_names_alone_match_the_items_each_split_reads(kind, wds_dir,
                                                                        parquet_dir, tokenizer):
  source = f"wds:{wds_dir}/*.tar" if kind == "wds" else f"parquet:{parquet_dir}/*.parquet"
  config = tiny_config(source, eval_fraction=0.3)
  read = {split: len(stream_documents(config, tokenizer, split=split))
          for split in ("train", "eval")}
  assert read["eval"] > 0
  line = pipeline.split_sizes(config).line
  assert line.startswith(f"data: {read['train']} train items, {read['eval']} eval items in "
                         f"{2 + (kind == 'wds')} file(s) of {source} (held out by a seeded hash")
  assert pipeline.split_sizes(tiny_config(source, eval_fraction=1e-9)).eval == 0
  config.data.eval_source = source
  assert pipeline.split_sizes(config).line.startswith(
      f"data: {sum(read.values())} train items, {sum(read.values())} eval items")


def test_one_file_feeds_more_readers_than_it_has_files(parquet_dir, tokenizer, tmp_path):
  """One parquet file, two processes: each reads it all and keeps every other row; together
  they read each row once, and both splits get rows."""
  single = tmp_path / "one"
  single.mkdir()
  shutil.copy(sorted(parquet_dir.iterdir())[0], single / "train-00000.parquet")
  source = f"parquet:{single}/*.parquet"
  alone = [d["source"] for d in stream_documents(tiny_config(source, eval_fraction=0.0), tokenizer)]
  halves = [[d["source"] for d in stream_documents(tiny_config(source, eval_fraction=0.0),
                                                   tokenizer, i, 2)] for i in range(2)]
  assert halves[0] and halves[1] and not set(halves[0]) & set(halves[1])
  assert sorted(halves[0] + halves[1]) == sorted(alone)


def test_prepare_from_tar_gives_the_documents_read_on_the_fly(wds_dir, tokenizer_path, tmp_path):
  config = tiny_config(f"wds:{wds_dir}/*.tar", eval_fraction=0.3)
  config.tokenizer.path = tokenizer_path
  tokenizer = ByteTokenizer.load(tokenizer_path)
  out = str(tmp_path / "prepared")
  summaries = prepare.prepare(config, out, records_per_shard=3, progress=False)
  by_split = {s.split: s for s in summaries}
  for split in ("train", "eval"):
    on_the_fly = [d for d in stream_documents(config, tokenizer, split=split) if "tokens" in d]
    stored = prepared_shards.read_documents(
        sorted(glob_paths(prepared_shards.shard_glob(out, split))), "<u2")
    assert len(stored) == len(on_the_fly) == by_split[split].documents
    for a, b in zip(on_the_fly, stored):
      np.testing.assert_array_equal(a["tokens"], b)
  assert by_split["train"].skipped + by_split["eval"].skipped == 2


def glob_paths(pattern):
  import glob
  return glob.glob(pattern)


def test_tokenizer_trains_from_a_parquet_source(parquet_dir, tmp_path):
  from data_pipeline import tokenizer_training

  config = tiny_config(f"parquet:{parquet_dir}/*.parquet", eval_fraction=0.0)
  config.tokenizer.num_files = 5
  streams, errors = tokenizer_training.codec_streams(config, 5)
  assert len(streams) + len(errors) == 5 and streams
  assert all(s[:2] == b"\xff\xd8" for s in streams)


# ---- remote paths (fsspec), through the same code path as gs:// -------------------------


def copy_to_memory_fs(folder, prefix: str) -> str:
  fs = fsspec.filesystem("memory")
  for path in sorted(folder.iterdir()):
    fs.pipe(f"{prefix}/{path.name}", path.read_bytes())
  return f"memory://{prefix}"


def test_memory_filesystem_urls_read_like_local_files(wds_dir, parquet_dir, tokenizer_path,
                                                     tokenizer, tmp_path):
  for kind, folder, pattern in (("wds", wds_dir, "*.tar"), ("parquet", parquet_dir, "*.parquet")):
    url = copy_to_memory_fs(folder, f"/bucket-{kind}")
    local = stream_documents(tiny_config(f"{kind}:{folder}/{pattern}", eval_fraction=0.0),
                             tokenizer)
    remote = stream_documents(tiny_config(f"{kind}:{url}/{pattern}", eval_fraction=0.0),
                              tokenizer)
    assert [d["source"].rsplit("/", 1)[1] for d in remote] == [
        d["source"].rsplit("/", 1)[1] for d in local]
    assert remote[0]["source"].startswith(f"{url}/")
    for a, b in zip(local, remote):
      if "tokens" in a:
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
  # Prepared ArrayRecord shards on a "bucket": copied once into data.cache_dir, then read.
  config = tiny_config(f"wds:{wds_dir}/*.tar", eval_fraction=0.0)
  config.tokenizer.path = tokenizer_path
  prepare.prepare(config, str(tmp_path / "prepared"), progress=False)
  url = copy_to_memory_fs(tmp_path / "prepared", "/bucket-prepared")
  source = sources.open_source(f"arrayrecord:{url}/train-*.arrayrecord", "image",
                               cache_dir=str(tmp_path / "cache"))
  local = sources.open_source(f"arrayrecord:{tmp_path}/prepared/train-*.arrayrecord", "image")
  assert len(source.items) == len(local.items) == 10
  assert [source.items[i] for i in range(10)] == [local.items[i] for i in range(10)]
  assert os.listdir(tmp_path / "cache")
  with pytest.raises(JpeglmError, match="no files match"):
    sources.open_source("wds:memory:///nothing-here/*.tar", "image")


# ---- slow files -------------------------------------------------------------------------


def test_a_file_too_slow_to_decode_is_abandoned_and_counted(tmp_path, photo_bytes, tokenizer):
  # 8000x8000 PNG of one colour: 0.2 MB on disk, within the pixel limit, seconds to inflate.
  slow = io.BytesIO()
  Image.new("RGB", (8000, 8000), (120, 30, 200)).save(slow, "PNG")
  samples = [("a", photo_bytes[0]), ("slow", slow.getvalue()), ("b", photo_bytes[1])]
  with tarfile.open(tmp_path / "s.tar", "w") as tar:
    for key, data in samples:
      add_member(tar, f"{key}.{'png' if key == 'slow' else 'jpg'}", data)
  limit = 0.5
  config = tiny_config(f"wds:{tmp_path}/*.tar", eval_fraction=0.0, max_seconds_per_file=limit)
  started = time.monotonic()
  documents = stream_documents(config, tokenizer)
  elapsed = time.monotonic() - started
  assert [("tokens" in d) for d in documents] == [True, False, True]  # the worker went on
  assert documents[1]["error"].startswith(f"{tmp_path}/s.tar/slow.png: not decoded and encoded "
                                          "within data.max_seconds_per_file=0.5")
  # No deadline: the same file does get through, so it was only slow, not bad.
  config.data.max_seconds_per_file = 0
  unbounded = stream_documents(config, tokenizer)
  assert "tokens" in unbounded[1]
  assert elapsed < 30  # the slow file cost the deadline, not its whole decode


# ---- video: video2dataset tars and parquet with mp4 bytes -------------------------------

VIDEO_CONFIG = CONFIG.replace("size=tiny", "size=tiny,codec=avc")


@pytest.fixture(scope="module")
def video_shards(tmp_path_factory):
  """A tar (mp4, json, txt per sample; a corrupt mp4 and a truncated final member) and a
  parquet file with a {bytes, path} video column and an empty row."""
  folder = tmp_path_factory.mktemp("video")
  clips = [open(p, "rb").read() for p in builtin_videos()]
  clips = [clips[2], clips[1]]  # carphone, bikes: the smaller clips
  samples = [("000000", clips[0]), ("000001", b"\x00\x00\x00\x18ftypmp42 broken"),
             ("000002", clips[1]), ("000003", clips[0])]
  write_wds_shard(folder / "00000.tar", samples, ext="mp4", truncate_last=True)
  rows = [hf_image(clips[1], "bikes.mp4"), hf_image(b"", "empty.mp4"),
          hf_image(clips[0], "carphone.mp4")]
  pq.write_table(pa.table({"video": rows}), folder / "videos.parquet", row_group_size=2)
  return folder


def video_config(source: str):
  config = load_config(VIDEO_CONFIG)
  config.data.source = source
  config.data.eval_fraction = 0.0
  config.data.max_bad_fraction = 0.5
  config.train.global_batch = 2
  config.tokenizer.num_files = 2
  config.tokenizer.vocab_size = 320
  return config


def test_video_tar_and_parquet_give_h264_documents(video_shards, tmp_path):
  from data_pipeline import tokenizer_training
  from jpeglm.codecs import AvcCodec

  wds = video_config(f"wds:{video_shards}/*.tar")
  tokenizer = tokenizer_training.train_tokenizer_from_source(wds, str(tmp_path / "tok.model"))
  codec = AvcCodec(width=wds.codec.width, height=wds.codec.height, fps=wds.codec.fps,
                   seconds=wds.codec.seconds, qp=wds.codec.qp)
  tar_documents = stream_documents(wds, tokenizer)
  parquet_documents = stream_documents(video_config(f"parquet:{video_shards}/*.parquet"),
                                       tokenizer)
  assert [("tokens" in d) for d in tar_documents] == [True, False, True, False]
  assert "000001.mp4" in tar_documents[1]["error"]
  assert "000003.mp4: unreadable tar shard" in tar_documents[3]["error"]
  assert [("tokens" in d) for d in parquet_documents] == [True, False, True]
  assert "(empty.mp4): no media bytes" in parquet_documents[1]["error"]
  # The same clip gives the same stream whichever container carried it.
  np.testing.assert_array_equal(tar_documents[0]["tokens"], parquet_documents[2]["tokens"])
  for document in tar_documents[:1] + parquet_documents[:1]:
    decoded = codec.decode(tokenizer.decode(document["tokens"]))
    assert decoded.complete, decoded.reason


@pytest.mark.slow
def test_grain_workers_split_the_files_and_resume_exactly(wds_dir, tokenizer):
  config = tiny_config(f"wds:{wds_dir}/*.tar", eval_fraction=0.0, num_workers=2)
  with pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1) as it:
    straight = take(it, 12)
    assert it.bad_inputs()[1] >= 1  # counted inside the workers, read from their state
  with pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1) as it:
    take(it, 5)
    state = it.get_state()
  with pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1) as it:
    it.set_state(state)
    for want, got in zip(straight[5:], take(it, 7)):
      np.testing.assert_array_equal(want["inputs"], got["inputs"])
  # Four workers for three files: each reads all three and keeps every 4th item; the
  # batches resume exactly all the same.
  config.data.num_workers = 4
  with pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1) as it:
    four = take(it, 8)
    state = it.get_state()
    more = take(it, 3)
  with pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1) as it:
    it.set_state(state)
    for want, got in zip(more, take(it, 3)):
      np.testing.assert_array_equal(want["inputs"], got["inputs"])
  assert all(b["inputs"].shape == straight[0]["inputs"].shape for b in four)


# ---- training: killed and resumed from a stream equals an uninterrupted run -------------

TRAIN_STEPS = 10


def stream_train_overrides(tokenizer_path, source, **extra):
  from tests.train_helpers import tiny_overrides
  return tiny_overrides(tokenizer_path, steps=TRAIN_STEPS, **{
      "data.source": source, "data.eval_fraction": 0.0, "data.max_bad_fraction": 0.5,
      "data.shuffle_buffer": 6, **extra})


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["wds", "parquet", "wds-video"])
def test_training_killed_and_resumed_equals_an_uninterrupted_run(kind, wds_dir, parquet_dir,
                                                                 video_shards, tokenizer_path,
                                                                 tmp_path):
  import signal
  import subprocess
  import sys

  from data_pipeline import tokenizer_training
  from tests.train_helpers import env_with_devices, losses

  config_arg = CONFIG
  if kind == "wds-video":  # one video2dataset tar, so one data shard; a 320-token BPE
    video = video_config(f"wds:{video_shards}/*.tar")
    tokenizer_path = str(tmp_path / "video.model")
    tokenizer_training.train_tokenizer_from_source(video, tokenizer_path)
    overrides = stream_train_overrides(tokenizer_path, video.data.source, **{
        "data.num_shards": 1, "model.vocab_size": 320, "tokenizer.vocab_size": 320,
        "data.max_bad_fraction": 0.6})
    config_arg = VIDEO_CONFIG
  else:
    source = f"wds:{wds_dir}/*.tar" if kind == "wds" else f"parquet:{parquet_dir}/*.parquet"
    overrides = stream_train_overrides(tokenizer_path, source)

  def train(workdir, fault=""):
    command = [sys.executable, "-m", "jpeglm", "train", "--config", config_arg, "--workdir",
               workdir, *overrides]
    return subprocess.run(command, env={**env_with_devices(8), "JPEGLM_FAULT": fault},
                          capture_output=True, text=True, timeout=600)

  straight = str(tmp_path / "straight")
  result = train(straight)
  assert result.returncode == 0, result.stderr[-3000:]
  want = losses(straight)
  assert sorted(want) == list(range(1, TRAIN_STEPS + 1))
  killed = str(tmp_path / "killed")
  result = train(killed, "sigkill@4")
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert sorted(losses(killed)) == [1, 2, 3]
  result = train(killed)
  assert result.returncode == 0, result.stderr[-3000:]
  assert losses(killed) == want


def test_eval_and_tokenizer_commands_take_stream_sources(wds_dir, tmp_path):
  from jpeglm.cli import main as cli_main
  from jpeglm.evaluation.protocol import pick_images

  picked = pick_images(f"wds:{wds_dir}/*.tar", 9, seed=0)
  assert len(picked) == 9 and all(p["data"] for p in picked)
  assert pick_images(f"wds:{wds_dir}/*.tar", 9, seed=0) == picked
  with pytest.raises(JpeglmError, match="has 11 readable items; 12 were asked for"):
    pick_images(f"wds:{wds_dir}/*.tar", 12, seed=0)
  out = tmp_path / "tok.model"
  assert cli_main(["tokenizer", "train", "--source", f"wds:{wds_dir}/*.tar", "--num-files", "8",
                   "--vocab-size", "300", "--out", str(out)]) == 0
  assert ByteTokenizer.load(str(out)).vocab_size == 300


def test_a_helper_that_cannot_start_stops_the_pipeline_instead_of_skipping(
    wds_dir, tokenizer, monkeypatch):
  from data_pipeline import bounded_encode

  monkeypatch.setattr(bounded_encode, "STARTUP_SECONDS", 0.0)
  config = tiny_config(f"wds:{wds_dir}/*.tar", eval_fraction=0.0)
  config.seed = 7_250_001  # settings no other test uses: a pool of its own, a fresh helper
  with pytest.raises(bounded_encode.HelperUnavailable, match="helper process did not start"):
    pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                               process_count=1, shuffle=False, repeat=False, seed=config.seed
                               ).dataset.__iter__().__next__()


def _worker_items(path, reader, index, count, state=None):
  ds = streaming.StreamDataset([path], reader, seed=0, shuffle=True, shuffle_buffer=2,
                               repeat=True)
  ds.set_slice(slice(index, None, count))
  it = iter(ds)
  if state is not None:
    it.set_state(state)
  return it


@pytest.mark.parametrize("row_group_size", [2, 6])
def test_workers_share_one_file_and_resume_exactly(parquet_dir, tmp_path, row_group_size):
  """Grain's slice for 2 workers over 1 file: by row group where it has several (each reads
  only its groups), else by item (each reads all and keeps every other row). Either way the
  shares are disjoint and cover the file, and a worker's state taken mid-file resumes."""
  path = str(tmp_path / "one.parquet")
  pq.write_table(pq.read_table(sorted(parquet_dir.iterdir())[0]), path,
                 row_group_size=row_group_size)
  reader = parquet_source.ParquetReader("", "image")
  everything = [i["name"] for i in reader(path)]
  units = reader.units(path)
  assert len(units) == 6 // row_group_size
  per_worker = [len(everything[w::2]) if len(units) == 1 else
                sum(len(list(reader(u))) for u in units[w::2]) for w in range(2)]
  shares = [[i["name"] for i in take(_worker_items(path, reader, w, 2), per_worker[w])]
            for w in range(2)]
  assert not set(shares[0]) & set(shares[1]) and sorted(sum(shares, [])) == sorted(everything)
  if len(units) > 1:  # whole row groups: rows 0-1 and 4-5, rows 2-3
    assert sorted(int(n.rsplit("#", 1)[1]) for n in shares[1]) == [2, 3]
  it = _worker_items(path, reader, 0, 2)
  take(it, 3)
  state = it.get_state()
  expected = [i["name"] for i in take(it, 5)]
  assert [i["name"] for i in take(_worker_items(path, reader, 0, 2, state), 5)] == expected
  assert list(reader(units[-1], 1)) == list(reader(units[-1]))[1:]  # resume inside a unit


def test_media_column_is_found_by_the_names_datasets_use():
  import pyarrow as pa

  schema = pa.schema([("caption", pa.binary()), ("img", pa.binary()), ("key", pa.string())])
  assert parquet_source.media_column(schema, "", "image", "a.parquet") == "img"
  only = pa.schema([("pixels_blob", pa.binary()), ("key", pa.string())])
  assert parquet_source.media_column(only, "", "image", "a.parquet") == "pixels_blob"
  two = pa.schema([("a", pa.binary()), ("b", pa.binary())])
  with pytest.raises(JpeglmError, match=r"a.parquet: several bytes columns \(a, b\)"):
    parquet_source.media_column(two, "", "image", "a.parquet")


@pytest.mark.slow  # prepare + train through the CLI (~40 s)
def test_one_parquet_file_prepares_and_trains_with_two_workers(photo_bytes, tmp_path,
                                                                tokenizer_path):
  """The shape most small datasets ship in, with the default tiny config and 2 workers: it
  was refused ("1 files ... cannot feed 2 data workers")."""
  import subprocess
  import sys

  from tests.train_helpers import env_with_devices

  folder = tmp_path / "hf"
  folder.mkdir()
  # 48 rows (each photo 4 times): the default 5% held out by name hash gives eval items.
  table = pa.table({"image": [hf_image(b, f"p{i}.jpg") for i, b in enumerate(photo_bytes * 4)]})
  pq.write_table(table, folder / "train-00000-of-00001.parquet", row_group_size=4)
  source = f"--config.data.source=parquet:{folder}/*.parquet"
  common = [f"--config.tokenizer.path={tokenizer_path}", "--config.data.num_workers=2"]
  prepared = subprocess.run(
      [sys.executable, "-m", "jpeglm", "prepare", "--config", CONFIG, source, *common,
       "--out", str(tmp_path / "shards")], env=env_with_devices(1), capture_output=True,
      text=True, timeout=600)
  assert prepared.returncode == 0, prepared.stderr[-2000:]
  assert "eval:" in prepared.stdout and "train:" in prepared.stdout  # both splits got items
  trained = subprocess.run(
      [sys.executable, "-m", "jpeglm", "train", "--config", CONFIG, source, *common,
       "--workdir", str(tmp_path / "run"), "--config.train.steps=3",
       "--config.train.global_batch=4", "--config.train.eval_every=3"],
      env=env_with_devices(1), capture_output=True, text=True, timeout=600)
  assert trained.returncode == 0, trained.stderr[-2000:]
  assert "th item" not in trained.stderr  # shared by row group, no reader reads it all
