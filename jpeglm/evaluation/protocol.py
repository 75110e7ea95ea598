"""The paper's zero-shot prefix-completion protocol on a trained run.

For each ratio r and seed: every evaluation image, as the model sees it (encoded with the
run's codec), is cut after the MCU rows covering r of its height (`JpegCodec.prefix`, the
paper's cut at the n-th RST7); the model samples the rest (KV-cache generation, all images
flowing through `--batch-size` continuous-batching slots unless `sample.continuous=False`, the
run's `sample.*` settings, syntax-safe if asked); the bytes are repaired as the authors do and
decoded. Scores per ratio:
  - FID of the completions against the originals after the codec round trip (the images the
    model was trained to produce), mean over seeds as in the paper;
  - valid-decode rate: the share of samples whose bytes decode completely (no damaged or
    missing scan data, no token that stands for no bytes); a sample is decoded up to such a
    token, and one that does not decode at all enters FID as a grey image;
  - tokens/s of generation.
Bits per byte of the model on the whole images (teacher-forced) is reported once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from collections.abc import Sequence

import jax
import ml_collections
import numpy as np
from PIL import Image

from data_pipeline import sources, streaming
from data_pipeline.media_files import media_files
from jpeglm.codecs import JpegCodec, image_from_bytes, make_codec, open_image
from jpeglm.errors import ConfigError, JpeglmError
from jpeglm.evaluation import fid as fid_lib
from jpeglm.evaluation.bits_per_byte import bits_per_byte, token_bits
from jpeglm.evaluation import stream_parts
from jpeglm.evaluation.report import SMALL_SET_NOTE
from jpeglm.fit import chips, decode_bound
from jpeglm.sampling import media
from jpeglm.sampling.continuous import generate_all
from jpeglm.sampling.run import load_run, make_generator

@dataclasses.dataclass
class Completions:
  images: list[Image.Image | None]
  complete: list[bool]
  tokens_generated: int
  seconds: float


def pick_images(source: str, num_images: int, seed: int) -> list[str] | list[dict]:
  """`num_images` files of `source`, a random choice (as the paper's "random validation
  images": folders are often sorted by class) fixed by `seed`, kept in listing order.
  `wds:` / `parquet:` sources give {"name", "data"} items from their files in a seeded order."""
  if source.startswith(sources.STREAM_PREFIXES):
    return streaming.sample_items(source, "image", num_images, seed)
  return pick_files(source, "image", num_images, seed)


def pick_files(source: str, kind: str, count: int, seed: int) -> list[str]:
  """`count` files of `kind` ("image" / "video") of a folder or builtin `source`: a random
  choice fixed by `seed`, kept in listing order."""
  paths = media_files(source, kind)
  if count > len(paths):
    raise JpeglmError(f"--num-images {count}: {source} has only {len(paths)} {kind}s")
  chosen = np.random.default_rng(seed).choice(len(paths), count, replace=False)
  return [paths[i] for i in sorted(chosen)]


def complete_images(generator, tokenizer, codec: JpegCodec, streams: Sequence[bytes],
                    ratio: float, seed: int, batch_size: int,
                    continuous: bool = True) -> Completions:
  """Image i's completion draws with the key of (seed, i) (jpeglm.sampling.keys), through
  `batch_size` continuous-batching slots or in fixed batches: the same tokens either way."""
  prompts = [[tokenizer.bos_id, *tokenizer.encode(codec.prefix(s, ratio))] for s in streams]
  images, complete, tokens = [], [], 0
  began = time.perf_counter()
  generations = generate_all(generator, prompts, seed, batch_size, continuous)
  seconds = time.perf_counter() - began
  for g in generations:
    tokens += len(g.tokens)
    picture = media.to_picture(codec, tokenizer, g.prompt, g.tokens)
    images.append(picture.image)
    complete.append(picture.valid)
  return Completions(images, complete, tokens, seconds)


def _grey(size: int) -> Image.Image:
  return Image.new("RGB", (size, size), (128, 128, 128))


def _save_grid(path: str, codec: JpegCodec, streams, completions: Completions, ratio: float,
               rows: int = 8) -> None:
  """prompt | completion | original for the first `rows` images."""
  lines = []
  for stream, image in zip(streams[:rows], completions.images[:rows]):
    prompt = codec.decode(codec.prefix(stream, ratio)).image
    lines.append(media.side_by_side([prompt, image, codec.decode(stream).image], codec.size))
  media.stack_rows(lines).save(path)


def evaluate(workdir: str, config: ml_collections.ConfigDict, images_source: str,
             ratios: Sequence[float], num_images: int, seeds: Sequence[int] = (0,),
             out: str | None = None, step: int | None = None, batch_size: int = 8,
             fid_batch_size: int = 4) -> dict:
  """Runs the protocol and writes `eval.json` (and a grid PNG per ratio) to `out`
  (default WORKDIR/eval). Returns what it wrote."""
  codec = make_codec(config.codec)
  if not isinstance(codec, JpegCodec):
    raise ConfigError("jpeglm eval implements the image protocol: the run's codec must be jpeg")
  if num_images < 2:
    raise JpeglmError("FID needs at least 2 images (--num-images)")
  out = out or os.path.join(workdir, "eval")
  os.makedirs(out, exist_ok=True)
  began = time.perf_counter()
  run = load_run(workdir, config, step)
  paths = pick_images(images_source, num_images, int(config.seed))
  streams = [codec.encode(image_from_bytes(p["data"], name=p["name"]) if isinstance(p, dict)
                          else open_image(p)) for p in paths]
  originals = [codec.decode(s).image for s in streams]
  reference = fid_lib.inception_features(originals, fid_batch_size)
  generator = make_generator(run, codec)

  results = []
  for ratio in ratios:
    per_seed = []
    for seed in seeds:
      done = complete_images(generator, run.tokenizer, codec, streams, ratio, seed, batch_size,
                             bool(config.sample.continuous))
      shown = [im if im is not None else _grey(codec.size) for im in done.images]
      score = fid_lib.frechet_distance(
          fid_lib.inception_features(shown, fid_batch_size), reference)
      per_seed.append({"seed": seed, "fid": score,
                       "valid_decode_rate": float(np.mean(done.complete)),
                       "tokens_generated": done.tokens_generated,
                       "seconds": round(done.seconds, 3)})
      if seed == seeds[0]:
        _save_grid(os.path.join(out, f"grid_r{ratio:g}.png"), codec, streams, done, ratio)
    tokens = sum(s["tokens_generated"] for s in per_seed)
    results.append({
        "ratio": ratio, "prompt_rows": codec.prefix_rows(ratio),
        "fid": float(np.mean([s["fid"] for s in per_seed])),
        "fid_std": float(np.std([s["fid"] for s in per_seed])),
        "valid_decode_rate": float(np.mean([s["valid_decode_rate"] for s in per_seed])),
        "tokens_per_second": tokens / max(sum(s["seconds"] for s in per_seed), 1e-9),
        "per_seed": per_seed})

  tokens = sum(s["tokens_generated"] for r in results for s in r["per_seed"])
  rate = tokens / max(sum(s["seconds"] for r in results for s in r["per_seed"]), 1e-9)
  bits = token_bits(config, run.params, run.tokenizer, streams)  # one pass, three figures
  estimate = decode_bound.protocol_estimate(  # a stream's tokens, BOS and EOS: its bits + 1
      config.model, rate, batch_size, float(np.mean([len(b) + 1 for b in bits])),
      chips.hbm_bandwidth(jax.devices()[0].device_kind))
  report = {
      "workdir": workdir, "step": run.step, "images": images_source,
      "num_images": num_images, "image_files": [p["name"] if isinstance(p, dict) else p for p in paths], "seeds": list(seeds),
      "codec_size": codec.size, "sample": dict(config.sample),
      "bits_per_byte": bits_per_byte(config, run.params, streams, run.tokenizer, bits=bits),
      "bits_by_part": stream_parts.bits_by_part(run.tokenizer, streams, bits),
      "results": results, "paper_protocol": estimate,
      "note": SMALL_SET_NOTE.format(n=num_images),
      "seconds": round(time.perf_counter() - began, 1)}
  with open(os.path.join(out, "eval.json"), "w") as f:
    json.dump(report, f, indent=2)
  return report
