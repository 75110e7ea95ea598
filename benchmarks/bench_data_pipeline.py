"""Data pipeline throughput: on-the-fly encoding per worker process vs reading prepared shards,
against what one TPU v5p host consumes for the paper's 7B JPEG-LM.

  .venv/bin/python benchmarks/bench_data_pipeline.py [--docs 200]

On-the-fly: source PNG/JPEG (the built-in photos, 300x172 .. 1411x1411) -> open -> random
square crop -> 256x256 -> JPEG q25 (paper settings) -> BPE tokens -> BOS..EOS. Each Grain
worker reads with one thread, so "per worker" means per core.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import tempfile
import time

import grain

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline import pipeline, prepared_shards, tokenizer_training, workers  # noqa: E402
from jpeglm.config_io import load_config  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "jpeglm.py") + ":size=7b,codec=jpeg"

# TPU v5p: 459 TFLOP/s bf16 peak per chip, 4 chips per host.
V5P_PEAK_FLOPS, CHIPS_PER_HOST, MFU = 459e12, 4, 0.5


def model_flops_per_token(config) -> tuple[float, float, float]:
  """(params, 6N, attention) training FLOPs per token (PaLM appendix B convention:
  6N + 12 * layers * d_model * context)."""
  m = config.model
  per_layer = 4 * m.d_model * m.d_model + 3 * m.d_model * m.d_ff
  params = m.n_layers * per_layer + 2 * m.vocab_size * m.d_model
  return params, 6 * params, 12 * m.n_layers * m.d_model * config.data.seq_len


def time_documents(stream: grain.IterDataset, num_docs: int, warmup: int) -> tuple[float, float]:
  """(documents/s, tokens/s) after `warmup` documents (worker start-up excluded)."""
  tokens = 0
  with workers.iterate(stream) as it:
    for _ in range(warmup):
      next(it)
    start = time.perf_counter()
    for _ in range(num_docs):
      tokens += len(next(it)["tokens"])
    seconds = time.perf_counter() - start
  return num_docs / seconds, tokens / seconds


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--docs", type=int, default=200, help="documents timed per measurement")
  args = parser.parse_args()
  config = load_config(CONFIG)
  config.tokenizer.num_files = 100
  tmp = tempfile.mkdtemp(prefix="bench_data_")
  tokenizer = tokenizer_training.train_tokenizer_from_source(config, os.path.join(tmp, "tok.model"))
  one_thread = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
  print(f"machine: {os.cpu_count()} cores; codec {config.codec.size}x{config.codec.size} "
        f"q{config.codec.quality}, vocab {tokenizer.vocab_size}")

  def on_the_fly():
    return pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                                      process_count=1, shuffle=True, repeat=True, seed=0)

  results = {}
  for n in (1, 2):
    stream = workers.with_workers(on_the_fly().dataset.to_iter_dataset(one_thread), n)
    images, tokens = time_documents(stream, args.docs, warmup=2 * n)
    results[n] = tokens / n
    tokens_per_image = tokens / images
    print(f"on-the-fly, {n} worker(s): {images:8.1f} images/s {tokens:10,.0f} tokens/s "
          f"({images / n:.1f} images/s, {tokens / n:,.0f} tokens/s per worker); "
          f"{tokens / images:,.0f} tokens/image")

  # Prepared shards: write the same kind of documents once, then time reading them back.
  documents = on_the_fly().dataset
  writer = prepared_shards.ShardWriter(os.path.join(tmp, "train-00000.arrayrecord"),
                                       prepared_shards.token_dtype(tokenizer.vocab_size))
  for i in range(args.docs):
    writer.write(documents[i]["tokens"])
  writer.close()
  with open(os.path.join(tmp, "meta.json"), "w") as f:
    json.dump({"token_dtype": prepared_shards.token_dtype(tokenizer.vocab_size),
               "tokenizer_sha256": hashlib.sha256(tokenizer.serialized()).hexdigest()}, f)
  config.data.source = "arrayrecord:" + prepared_shards.shard_glob(tmp, "train")
  config.data.eval_source = "arrayrecord:" + prepared_shards.shard_glob(tmp, "train")
  stream = on_the_fly().dataset.to_iter_dataset(one_thread)
  images, tokens = time_documents(stream, args.docs * 5, warmup=10)
  print(f"prepared ArrayRecord, in-process: {images:8.1f} documents/s {tokens:10,.0f} tokens/s")
  train = pipeline.make_train_iterator(config, tokenizer, process_index=0, process_count=1)
  next(train)
  start, rows = time.perf_counter(), 0
  for _ in range(20):
    rows += next(train)["inputs"].shape[0]
  seconds = time.perf_counter() - start
  print(f"prepared ArrayRecord -> packed batches ({config.train.global_batch}x"
        f"{config.data.seq_len}): {rows * config.data.seq_len / seconds:10,.0f} tokens/s")

  params, dense, attention = model_flops_per_token(config)
  per_token = dense + attention
  host_flops = V5P_PEAK_FLOPS * CHIPS_PER_HOST * MFU
  need = host_flops / per_token
  print(f"\n7B JPEG-LM: N = {params / 1e9:.2f}B params; FLOPs/token = 6N ({dense / 1e9:.1f} G) "
        f"+ 12*layers*d*context ({attention / 1e9:.1f} G, context {config.data.seq_len}) = "
        f"{per_token / 1e9:.1f} GFLOP")
  print(f"one v5p host: {CHIPS_PER_HOST} x {V5P_PEAK_FLOPS / 1e12:.0f} TFLOP/s x {MFU:.0%} MFU "
        f"= {host_flops / 1e12:.0f} TFLOP/s -> {need:,.0f} tokens/s "
        f"= {need / tokens_per_image:.1f} images/s at {tokens_per_image:,.0f} tokens/image")
  workers_needed = need / results[1]
  print(f"workers needed at the measured {results[1]:,.0f} tokens/s per worker: "
        f"{workers_needed:.2f} -> one worker per core "
        f"{'keeps up' if workers_needed <= 1 else f'keeps up with {workers_needed:.0f}+ cores'}")


if __name__ == "__main__":
  main()
