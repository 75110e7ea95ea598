"""Samples while training (`train.sample_every`): watch an image model learn to draw.

Every `sample_every` steps the trainer hands its parameters here. One batch is generated
with syntax-safe decoding (jpeglm.codecs.jpeg_grammar): unconditional samples (BOS alone)
and completions of the top half of fixed held-out images (the first of the held-out split,
the same ones every time, as the paper cuts prompts). The grid goes to TensorBoard
(`samples/grid`, an image summary) and to WORKDIR/samples/step_N/ with each sample's JPEG
and one line per sample in samples.jsonl; the share of samples whose bytes decode completely
goes to metrics.jsonl and TensorBoard as `samples_valid_rate`.

Every process runs the generation (the parameters are global arrays); the main one writes.
"""

from __future__ import annotations

import io
import json
import time

import jax
import ml_collections
import numpy as np

from jpeglm.codecs import JpegCodec, make_codec
from jpeglm.errors import ConfigError
from jpeglm.runtime import files
from jpeglm.training.metrics_log import MetricsLog
from jpeglm.sampling import media
from jpeglm.sampling.run import build_generator
from jpeglm.tokenizer import ByteTokenizer

NUM_UNCONDITIONAL = 8
NUM_PROMPTS = 4
PROMPT_RATIO = 0.5
MIN_TILE = 64  # pixels a tile is drawn at, at least (28x28 digits are shown at 64x64)


def held_out_streams(config: ml_collections.ConfigDict, count: int) -> list[bytes]:
  """Codec streams of `count` items spread evenly over the held-out split (a sorted source
  such as builtin:digits gives different classes); an item that fails is replaced by the
  next good one."""
  from data_pipeline import pipeline  # the data stack, only when samples are asked for

  documents = pipeline.encoded_documents(config, None, split="eval", process_index=0,
                                         process_count=1, shuffle=False, repeat=False,
                                         seed=config.seed + pipeline.EVAL_SEED_OFFSET)
  size = documents.shard_size
  streams, used = [], set()
  for start in np.linspace(0, size - 1, min(count, size)).round().astype(int):
    for i in range(int(start), size):
      document = documents.dataset[i]
      if i not in used and "codec_bytes" in document:
        streams.append(document["codec_bytes"])
        used.add(i)
        break
  return streams


def decode_generations(codec: JpegCodec, tokenizer: ByteTokenizer, generations
                       ) -> list[media.Picture]:
  """The picture of each generation (jpeglm.sampling.media.to_picture)."""
  return [media.to_picture(codec, tokenizer, g.prompt, g.tokens) for g in generations]


class TrainSamples:
  """The trainer's hook: `samples(step, params)` after each step; acts every sample_every."""

  def __init__(self, config: ml_collections.ConfigDict, workdir: str, tokenizer: ByteTokenizer,
               metrics_log: MetricsLog, mesh=None):
    self.every = int(config.train.sample_every or 0)
    self.config, self.workdir, self.tokenizer = config, workdir, tokenizer
    self.metrics_log, self.mesh = metrics_log, mesh
    self.is_main = jax.process_index() == 0
    self._generator = self._prompts = None
    if self.every:
      self.codec = make_codec(config.codec)
      if not isinstance(self.codec, JpegCodec):
        raise ConfigError("train.sample_every is implemented for JPEG (codec.name=jpeg) only")

  def __call__(self, step: int, params) -> dict | None:
    if not self.every or step % self.every:
      return None
    return self.sample(step, params)

  def _setup(self, params) -> None:
    if self._generator is None:
      self._generator = build_generator(params, self.config, self.tokenizer, self.codec,
                                        syntax_safe=True, mesh=self.mesh)
      self._prompts = [(s, self.codec.prefix(s, PROMPT_RATIO))
                       for s in held_out_streams(self.config, NUM_PROMPTS)]
    self._generator.params = params

  def sample(self, step: int, params) -> dict:
    """Generates, draws and logs the grid of `step`; returns the logged numbers."""
    started = time.perf_counter()
    self._setup(params)
    bos = self.tokenizer.bos_id
    prompts = [[bos]] * NUM_UNCONDITIONAL + [
        [bos, *self.tokenizer.encode(cut)] for _, cut in self._prompts]
    generations = self._generator.generate(prompts, seed=self.config.seed)
    decoded = decode_generations(self.codec, self.tokenizer, generations)
    valid = sum(p.valid for p in decoded) / len(decoded)
    result = {"samples_valid_rate": valid, "samples_seconds": time.perf_counter() - started}
    if self.is_main:
      self._write(step, generations, decoded)
      self.metrics_log.write(step, result)
    return result

  def _write(self, step: int, generations, decoded) -> None:
    out = files.join(self.workdir, "samples", f"step_{step}")
    files.makedirs(out)
    tile = max(self.codec.size, MIN_TILE)
    images = [p.image for p in decoded]
    rows = [media.side_by_side(images[:NUM_UNCONDITIONAL], tile)]
    for (full, cut), image in zip(self._prompts, images[NUM_UNCONDITIONAL:]):
      rows.append(media.side_by_side(
          [self.codec.decode(cut).image, image, self.codec.decode(full).image], tile))
    grid = media.stack_rows(rows)
    png = io.BytesIO()
    grid.save(png, format="PNG")
    files.write_bytes(files.join(out, "grid.png"), png.getvalue())
    self.metrics_log.image(step, "samples/grid", np.asarray(grid.convert("RGB")))
    lines = []
    for i, (g, picture) in enumerate(zip(generations, decoded)):
      if picture.image is not None:
        files.write_bytes(files.join(out, f"sample_{i:03d}.jpg"),
                          self.codec.standalone(self.codec.repair(picture.data)))
      kind = "unconditional" if i < NUM_UNCONDITIONAL else "completion"
      lines.append(json.dumps({"step": step, "index": i, "kind": kind,
                               "tokens_generated": len(g.tokens), "complete": picture.valid,
                               "reason": picture.reason}) + "\n")
    files.write_bytes(files.join(out, "samples.jsonl"), "".join(lines).encode())
