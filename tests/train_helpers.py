"""Shared pieces of the tests: the repository and tiny config paths, the tiny run's overrides
and tokenizer, and running `jpeglm train` in subprocesses with a chosen number of fake CPU
devices. Shared fixtures (`tokenizer_path`, `trained_run`) are in tests/conftest.py."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "jpeglm.py") + ":size=tiny"


def tiny_overrides(tokenizer_path: str, steps: int = 6, **extra) -> list[str]:
  values = {"tokenizer.path": tokenizer_path, "data.seq_len": 128, "model.max_len": 128,
            "train.global_batch": 8, "train.steps": steps, "train.log_every": 1,
            "train.checkpoint_every": 3, "train.eval_every": 0, "train.warmup_steps": 2,
            "train.lr": 3e-3, "data.num_workers": 0, "data.num_shards": 2}
  values.update(extra)
  return [f"--config.{k}={v}" for k, v in values.items()]


def train_tiny_tokenizer(path) -> str:
  """A 320-token BPE on the built-in photos at 64x64 (the tiny config's codec)."""
  from data_pipeline.media_files import builtin_photos
  from jpeglm.codecs import JpegCodec, open_image
  from jpeglm.tokenizer import ByteTokenizer

  codec = JpegCodec(size=64)
  ByteTokenizer.train([codec.encode(open_image(p)) for p in builtin_photos()], 320, path)
  return str(path)


def env_with_devices(count: int) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={count}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def train_command(workdir: str, overrides: list[str], *extra: str) -> list[str]:
  return [sys.executable, "-m", "jpeglm", "train", "--config", CONFIG, "--workdir", workdir,
          *overrides, *extra]


def run_train(workdir: str, overrides: list[str], devices: int = 8, check: bool = True,
              extra: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
  result = subprocess.run(train_command(workdir, overrides, *extra), env=env_with_devices(devices),
                          capture_output=True, text=True, timeout=600)
  if check and result.returncode != 0:
    raise AssertionError(f"jpeglm train failed ({result.returncode}):\n{result.stderr[-3000:]}")
  return result


def losses(workdir: str) -> dict[int, float]:
  """step -> loss, the last value written for each step (a resumed run rewrites some)."""
  out = {}
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      if "loss" in row:
        out[row["step"]] = row["loss"]
  return out


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]
