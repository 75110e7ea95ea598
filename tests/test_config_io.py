"""Config files with arguments, `--config.k=v` overrides, and workdir JSON round trips."""

import os

import pytest

from jpeglm.config_io import apply_overrides, load_config, read_config, save_config
from jpeglm.errors import ConfigError
from tests.train_helpers import REPO

CONFIG = os.path.join(REPO, "configs", "jpeglm.py")


def test_variants_by_argument():
  tiny = load_config(f"{CONFIG}:size=tiny")
  seven = load_config(f"{CONFIG}:size=7b,codec=jpeg")
  avc = load_config(f"{CONFIG}:size=7b,codec=avc")
  assert (seven.model.d_model, seven.model.n_layers, seven.model.d_ff) == (4096, 32, 11008)
  assert (seven.model.vocab_size, seven.data.seq_len) == (320, 12288)
  assert (avc.model.vocab_size, avc.data.seq_len, avc.codec.name) == (1024, 32768, "avc")
  assert tiny.model.d_model < seven.model.d_model


def test_overrides_are_typed():
  c = load_config(CONFIG, ["--config.train.lr=1e-3", "--config.codec.quality=50",
                           "--config.data.source=/data/photos"])
  assert c.train.lr == 1e-3 and c.codec.quality == 50 and c.data.source == "/data/photos"


@pytest.mark.parametrize("override,match", [
    ("--config.train.nope=1", "unknown config key 'train.nope'"),
    ("--config.codec.quality=high", "quality"),
    ("--config.train.lr", "needs a value"),
])
def test_bad_overrides(override, match):
  with pytest.raises(ConfigError, match=match):
    load_config(CONFIG, [override])


def test_bad_argument_and_missing_file(tmp_path):
  with pytest.raises(Exception, match="size"):
    load_config(f"{CONFIG}:size=huge")
  with pytest.raises(ConfigError, match="not found"):
    load_config(str(tmp_path / "none.py"))


def test_workdir_round_trip_and_overrides(tmp_path):
  c = load_config(f"{CONFIG}:size=tiny")
  save_config(c, tmp_path / "config.json")
  back = read_config(tmp_path / "config.json")
  assert back.to_dict() == c.to_dict()
  changed = apply_overrides(back, ["--config.sample.syntax_safe=True", "--config.sample.top_k=40"])
  assert changed.sample.syntax_safe is True and changed.sample.top_k == 40
  with pytest.raises(ConfigError, match="no config"):
    read_config(tmp_path / "missing.json")


def test_config_json_is_never_seen_half_written(tmp_path):
  # Process 0 writes the workdir's config.json while the other processes of a multi-process
  # run read it (a fresh start read it empty: "config.json is damaged"). A reader racing a
  # writer must see a whole file every time.
  import threading

  path = str(tmp_path / "config.json")
  config = load_config(f"{CONFIG}:size=7b")
  save_config(config, path)
  done = threading.Event()

  def write():
    while not done.is_set():
      save_config(config, path)

  writer = threading.Thread(target=write)
  writer.start()
  try:
    for _ in range(300):
      assert read_config(path).model.d_model == 4096
  finally:
    done.set()
    writer.join()
  assert os.listdir(tmp_path) == ["config.json"]  # no temporary file left behind
