"""A workdir at a URL (a TPU pod's gs://) holds the whole run, not only its checkpoints:
config.json, tokenizer.model, metrics.jsonl, TensorBoard events, goodput.json and sample
grids go through jpeglm.runtime.files. fsspec's in-memory filesystem stands in for the
bucket (nothing may reach the network in tests)."""

import json
import os

import fsspec
import pytest

from jpeglm.config_io import load_config, read_config
from jpeglm.runtime import files
from jpeglm.training import goodput, run_setup
from jpeglm.training.metrics_log import MetricsLog, read_metrics
from tests.train_helpers import CONFIG, tiny_overrides


@pytest.fixture
def bucket():
  fs = fsspec.filesystem("memory")
  url = f"memory://bucket-{os.getpid()}/run"
  yield url, fs
  if fs.exists(url):
    fs.rm(url, recursive=True)


def test_config_and_tokenizer_land_in_the_bucket(bucket, tokenizer_path):
  url, fs = bucket
  config = load_config(CONFIG, tiny_overrides(tokenizer_path))
  run_setup.write_config(config, url)
  run_setup.check_workdir_config(config, url)  # a rerun reads it back
  assert read_config(files.join(url, "config.json")).model.d_model == config.model.d_model
  tokenizer = run_setup.resolve_tokenizer(config, url, True, lambda what: None)
  with open(tokenizer_path, "rb") as f:
    assert fs.cat(files.join(url, "tokenizer.model")) == f.read()
  assert tokenizer.vocab_size == config.model.vocab_size
  assert not os.path.exists("memory:")  # nothing written to a local folder named after the URL


def test_metrics_and_goodput_are_copied_up_and_appended_on_resume(bucket, tmp_path):
  url, fs = bucket
  log = MetricsLog(url)
  log.write(1, {"loss": 2.5})
  log.close()
  again = MetricsLog(url)  # a resumed run appends to the bucket's file
  again.write(2, {"loss": 2.0})
  again.close()
  assert [r["step"] for r in read_metrics(url)] == [1, 2]
  assert any(p.endswith(".json") is False and "tensorboard" in p
             for p in fs.find(url))  # event files copied up too
  record = goodput.Goodput(url, started=0.0, start_step=0, end_step=4)
  record.dispatched(1)
  record.finish()
  (attempt,) = goodput.read_attempts(url)
  assert attempt["finished"] and attempt["last_step"] == 1
  assert json.loads(fs.cat(files.join(url, "goodput.json")))["attempts"][0]["attempt"] == 1


def test_local_paths_are_unchanged(tmp_path):
  path = str(tmp_path / "a" / "b.bin")
  files.makedirs(os.path.dirname(path))
  files.write_bytes(path, b"x")
  assert files.read_bytes(path) == b"x" and files.local_copy(path) == path
  assert files.join(str(tmp_path), "c") == os.path.join(str(tmp_path), "c")
  assert files.join("gs://b/run/", "checkpoints") == "gs://b/run/checkpoints"
