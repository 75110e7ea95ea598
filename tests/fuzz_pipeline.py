"""Running a folder of (mutated) media through the data pipeline, for tests/test_data_fuzz.py.

`python -m tests.fuzz_pipeline FOLDER CODEC TOKENIZER` prints one JSON object: each file's
outcome and encoding time (through the same encoding stage the trainer's iterator uses), and
the skip counters of `make_train_iterator` after more than one pass over the folder. The
fuzz test runs it in a subprocess with a timeout, so that a hang is a failure, not a stuck
suite.
"""

from __future__ import annotations

import json
import sys
import time

from data_pipeline import pipeline
from jpeglm.config_io import load_config
from jpeglm.tokenizer import ByteTokenizer
from tests.train_helpers import CONFIG


def folder_overrides(folder: str, codec: str, tokenizer_path: str, num_workers: int = 0
                     ) -> list[str]:
  """A tiny config reading every file of `folder` in order, all in the train split, with a
  skip limit that never stops the run (the fuzz test counts skips itself)."""
  values = {"data.source": folder, "data.eval_fraction": 0.0, "data.max_bad_fraction": 1.0,
            "data.shuffle": False, "data.num_workers": num_workers, "data.seq_len": 256,
            "model.max_len": 256, "train.global_batch": 2, "tokenizer.path": tokenizer_path,
            "tokenizer.vocab_size": 320, "model.vocab_size": 320}
  return [f"--config.{k}={v}" for k, v in values.items()]


def folder_config(folder: str, codec: str, tokenizer_path: str, num_workers: int = 0):
  return load_config(f"{CONFIG},codec={codec}",
                     folder_overrides(folder, codec, tokenizer_path, num_workers))


def file_outcomes(config, tokenizer: ByteTokenizer) -> list[dict]:
  """[{"name", "error" (or None), "seconds"}] for each item of the train split, in order."""
  documents = pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                                         process_count=1, shuffle=False, repeat=False,
                                         seed=config.seed)
  out = []
  for i in range(documents.shard_size):
    began = time.perf_counter()
    document = documents.dataset[i]
    out.append({"name": document["source"], "error": document.get("error"),
                "seconds": time.perf_counter() - began})
  return out


def iterator_counts(config, tokenizer: ByteTokenizer, num_items: int,
                    max_batches: int = 10_000) -> dict:
  """Batches from the trainer's iterator until it has seen more than one pass over the
  folder: {"batches", "seen", "skipped"} from its `bad_inputs()` counters."""
  iterator = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  try:
    batches = seen = skipped = 0
    while seen <= num_items and batches < max_batches:
      batch = next(iterator)
      assert batch["inputs"].shape == (config.train.global_batch, config.data.seq_len)
      batches += 1
      seen, skipped = iterator.bad_inputs()
  finally:
    iterator.close()
  return {"batches": batches, "seen": seen, "skipped": skipped}


def main(folder: str, codec: str, tokenizer_path: str, num_workers: str = "0") -> None:
  tokenizer = ByteTokenizer.load(tokenizer_path)
  outcomes = file_outcomes(folder_config(folder, codec, tokenizer_path), tokenizer)
  counts = iterator_counts(folder_config(folder, codec, tokenizer_path, int(num_workers)),
                           tokenizer, len(outcomes))
  print(json.dumps({"files": outcomes, "iterator": counts}))


if __name__ == "__main__":
  main(*sys.argv[1:])
