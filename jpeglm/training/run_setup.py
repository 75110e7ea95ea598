"""What a run settles before any compute: the workdir's config and tokenizer.

Checks that a rerun in the same workdir builds the same model (it resumes), that the
tokenizer's vocabulary is the model's, and writes config.json and tokenizer.model once
(on process 0). Each mismatch is a one-line JpeglmError naming both values.
"""

from __future__ import annotations

import os
import tempfile

import ml_collections

from jpeglm.config_io import read_config, save_config
from jpeglm.errors import ConfigError, JpeglmError
from jpeglm.runtime import files
from jpeglm.tokenizer import ByteTokenizer

CONFIG_FILE = "config.json"
TOKENIZER_FILE = "tokenizer.model"
CHECKPOINT_DIR = "checkpoints"
# Settings that change what a checkpoint holds: a rerun may not change them.
MODEL_KEYS = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "d_ff", "param_dtype")


def check_same_model(saved: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
                     where: str) -> None:
  """`saved` and `model` are `config.model` sections: a rerun must build the same weights."""
  for key in MODEL_KEYS:
    if saved.get(key) != model.get(key):
      raise ConfigError(f"{where} holds a run with model.{key}={saved.get(key)!r}, this "
                        f"config has {model.get(key)!r}: use another --workdir")


def check_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  path = files.join(workdir, CONFIG_FILE)
  if files.exists(path):
    check_same_model(read_config(path).model, config.model, workdir)


def resolve_tokenizer(config: ml_collections.ConfigDict, workdir: str, is_main: bool,
                      wait_for_main) -> ByteTokenizer:
  """The run's tokenizer: config.tokenizer.path, else the workdir's, else trained from the
  data source by process 0 into the workdir."""
  target = files.join(workdir, TOKENIZER_FILE)
  given = config.tokenizer.path
  if given:
    tokenizer = ByteTokenizer.load(files.local_copy(given))
    if files.exists(target) and files.read_bytes(target) != files.read_bytes(given):
      raise JpeglmError(f"{workdir} was trained with another tokenizer than {given}; use "
                        "another --workdir")
    if is_main and not files.exists(target):
      # The others may be comparing it already: written whole.
      files.write_bytes(target, files.read_bytes(given))
  else:
    if is_main and not files.exists(target):
      from data_pipeline.tokenizer_training import train_tokenizer_from_source
      local = (os.path.join(tempfile.mkdtemp(prefix="jpeglm-"), TOKENIZER_FILE)
               if files.is_url(target) else target)
      train_tokenizer_from_source(config, local, config.data.num_workers)
      if local != target:
        with open(local, "rb") as f:
          files.write_bytes(target, f.read())
    wait_for_main("tokenizer")
    tokenizer = ByteTokenizer.load(files.local_copy(target))
  if tokenizer.vocab_size != config.model.vocab_size:
    raise ConfigError(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but "
                      f"model.vocab_size is {config.model.vocab_size}")
  return tokenizer


def write_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  save_config(config, files.join(workdir, CONFIG_FILE))
