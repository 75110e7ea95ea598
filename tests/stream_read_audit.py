"""One process of tests/test_dataset_shapes.py's read audit: joins the multi-process JAX
runtime (JPEGLM_COORDINATOR / NUM_PROCESSES / PROCESS_ID), builds the trainer's own data
iterator over a `wds:` source with 2 Grain workers, and takes a few batches. Every item a
reader reads is appended to READS/<this process's pid>-<reader's pid>.txt.

  python -m tests.stream_read_audit SHARD_DIR TOKENIZER READS
"""

from __future__ import annotations

import dataclasses
import os
import sys

BATCHES = 12


@dataclasses.dataclass(frozen=True)
class RecordingReader:
  """A stream reader that logs the name of each item it reads (pickled into Grain's worker
  processes by reference, so it must live in an importable module)."""

  inner: object
  folder: str

  def __call__(self, path: str, start: int = 0):
    log = os.path.join(self.folder, f"{os.getppid()}-{os.getpid()}.txt")
    for item in self.inner(path, start):
      with open(log, "a") as f:
        f.write(item["name"] + "\n")
      yield item

  def names(self, path: str) -> list[str]:
    return self.inner.names(path)


def main(shard_dir: str, tokenizer_path: str, reads: str) -> None:
  from data_pipeline import streaming
  from jpeglm.config_io import load_config
  from jpeglm.runtime import distributed
  from jpeglm.tokenizer import ByteTokenizer
  from jpeglm.training import trainer
  from tests.train_helpers import CONFIG

  distributed.initialize()
  open_files = streaming.open_files
  streaming.open_files = lambda spec, kind: (lambda files, reader: (
      files, RecordingReader(reader, reads)))(*open_files(spec, kind))
  config = load_config(CONFIG, [
      f"--config.data.source=wds:{shard_dir}/*.tar", f"--config.tokenizer.path={tokenizer_path}",
      "--config.data.num_workers=2", "--config.data.eval_fraction=0.0",
      "--config.data.shuffle_buffer=4", "--config.data.prefetch_documents=4",
      "--config.data.read_threads=1", "--config.data.seq_len=128", "--config.model.max_len=128",
      "--config.train.global_batch=8"])
  batches = trainer._train_iterator(config, ByteTokenizer.load(tokenizer_path))
  try:
    for _ in range(BATCHES):
      next(batches)
  finally:
    batches.close()


if __name__ == "__main__":
  main(*sys.argv[1:])
