"""Data pipeline throughput: on-the-fly encoding per worker process vs reading prepared shards,
against what one TPU v5p host consumes for the paper's 7B JPEG-LM.

  .venv/bin/python benchmarks/bench_data_pipeline.py [--docs 200]

Per source (a folder, WebDataset tar shards, Hugging Face parquet, prepared ArrayRecord),
images/s of one worker (one core, in-process), with and without the data.max_seconds_per_file
helper process, and the workers one v5p host needs to feed the 7B JPEG-LM at launch/README.md's
estimated tokens/s per chip.

On-the-fly: source PNG/JPEG (the built-in photos, 300x172 .. 1411x1411) -> open -> random
square crop -> 256x256 -> JPEG q25 (paper settings) -> BPE tokens -> BOS..EOS. Each Grain
worker reads with one thread, so "per worker" means per core.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import time

import grain

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipeline import pipeline, prepared_shards, tokenizer_training, workers  # noqa: E402
from data_pipeline.media_files import builtin_photos  # noqa: E402
from jpeglm.config_io import load_config  # noqa: E402
from jpeglm.fit.chips import TPUS  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "jpeglm.py") + ":size=7b,codec=jpeg"

# TPU v5p: 459 TFLOP/s bf16 peak per chip, 4 chips per host.
V5P_PEAK_FLOPS, CHIPS_PER_HOST, MFU = TPUS["v5p"].flops, TPUS["v5p"].chips_per_host, 0.5
# launch/README.md, "The paper's 7B models on TPU slices": JPEG L=12,288 on v5p-8 / v5p-16,
# an estimated ceiling of tokens/s per chip (compute and HBM traffic only).
V5P_7B_JPEG_TOKENS_PER_CHIP = 6_922
TOKENS_PER_IMAGE = 5_100  # paper.md: about 5K tokens per 256x256 image at q25, vocab 10K


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


def write_source_copies(paths: list[str], out: str) -> dict[str, str]:
  """The same image files as a folder, as img2dataset-style tar shards (KEY.jpg/.json/.txt)
  and as Hugging Face parquet ({bytes, path} struct): source specs by name."""
  import pyarrow as pa
  import pyarrow.parquet as pq

  folder = os.path.join(out, "folder")
  os.makedirs(folder)
  for p in paths:
    shutil.copy(p, folder)
  per_shard = max(1, len(paths) // 4)
  groups = [paths[i:i + per_shard] for i in range(0, len(paths), per_shard)]
  for n, group in enumerate(groups):
    with tarfile.open(os.path.join(out, f"{n:05d}.tar"), "w") as tar:
      for i, p in enumerate(group):
        key = f"{n:05d}{i:04d}"
        ext = os.path.splitext(p)[1]
        for name, data in ((key + ext, open(p, "rb").read()),
                           (key + ".json", json.dumps({"key": key}).encode()),
                           (key + ".txt", b"a caption")):
          info = tarfile.TarInfo(name)
          info.size = len(data)
          tar.addfile(info, io.BytesIO(data))
    rows = [{"bytes": open(p, "rb").read(), "path": os.path.basename(p)} for p in group]
    pq.write_table(pa.table({"image": rows}), os.path.join(out, f"train-{n:05d}.parquet"))
  return {"folder": folder, "wds tar shards": f"wds:{out}/*.tar",
          "parquet (HF image struct)": f"parquet:{out}/*.parquet"}


def bench_sources(config, tokenizer, paths: list[str], out: str, docs: int, prepared_rate: float
                  ) -> None:
  one_thread = grain.ReadOptions(num_threads=1, prefetch_buffer_size=4)
  rates = {}
  deadline = config.data.max_seconds_per_file
  for name, spec in write_source_copies(paths, out).items():
    for seconds in (deadline, 0):
      config.data.source, config.data.eval_source = spec, ""
      config.data.eval_fraction, config.data.max_seconds_per_file = 0.0, seconds
      config.data.shuffle_buffer = 64
      dataset = pipeline.encoded_documents(config, tokenizer, split="train", process_index=0,
                                           process_count=1, shuffle=True, repeat=True,
                                           seed=0).dataset
      if isinstance(dataset, grain.MapDataset):
        dataset = dataset.to_iter_dataset(one_thread)
      images, _ = time_documents(dataset, docs, warmup=4)
      label = f"{name}, {'helper, deadline ' + format(seconds, 'g') + ' s' if seconds else 'no deadline'}"
      rates[label] = images
      print(f"  {label:52s} {images:7.1f} images/s per worker")
  rates["prepared ArrayRecord (tokens stored)"] = prepared_rate
  need = V5P_7B_JPEG_TOKENS_PER_CHIP * CHIPS_PER_HOST / TOKENS_PER_IMAGE
  print(f"\nassumption: the 7B JPEG-LM at launch/README.md's estimated {V5P_7B_JPEG_TOKENS_PER_CHIP:,} "
        f"tokens/s per v5p chip x {CHIPS_PER_HOST} chips per host / {TOKENS_PER_IMAGE:,} tokens "
        f"per image (paper) = {need:.1f} images/s per v5p host")
  for label, images in rates.items():
    print(f"  {label:52s} {need / images:7.3f} workers per v5p host")


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
  prepared_images = images
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

  print(f"\nsources, one worker (in-process, one core), {args.docs} images each, 256x256 q"
        f"{config.codec.quality} (the same {len(builtin_photos())} built-in photos in each form):")
  bench_sources(config, tokenizer, builtin_photos(), os.path.join(tmp, "sources"), args.docs,
                prepared_images)


if __name__ == "__main__":
  main()
