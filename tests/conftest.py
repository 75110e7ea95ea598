"""Every test process sees 8 fake CPU devices (must be set before jax is imported), and the
fixtures several test files share. Constants (REPO, CONFIG) and helpers are in
tests/train_helpers.py."""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8"]).strip()

import pytest  # noqa: E402

from tests.train_helpers import CONFIG, tiny_overrides, train_tiny_tokenizer  # noqa: E402


@pytest.fixture(scope="session")
def tokenizer_path(tmp_path_factory) -> str:
  """The tiny config's tokenizer: a 320-token BPE on the built-in photos at 64x64."""
  return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tokenizer_path) -> str:
  """A workdir trained 2 steps on short rows, with room (model.max_len 1024) to sample or
  score a whole 64x64 image. Read it, do not write into it."""
  from jpeglm.config_io import load_config
  from jpeglm.train import train_and_evaluate

  workdir = str(tmp_path_factory.mktemp("run"))
  train_and_evaluate(load_config(CONFIG, tiny_overrides(tokenizer_path, steps=2,
                                                        **{"model.max_len": 1024})), workdir)
  return workdir
