"""`make demo`: the whole path on real media that ship inside installed packages.

`--demo digits` (the default, `make demo`): a JPEG-LM learns MNIST digits in three minutes
on a CPU; `--demo digits-long` (`make demo DEMO=digits-long`) trains for the budget the
frontier found (jpeglm.demos.digits). `--demo video` (`make demo DEMO=video`): an AVC-LM
continues a held-out clip (jpeglm.demos.video). `--demo photos` (`make demo DEMO=photos`), below:

1. Encode the built-in photos as the paper does, train the byte BPE on them, check that
   image -> JPEG bytes -> tokens -> bytes -> image is lossless, and draw what the model sees
   (full images and the paper's row-cut prompts).
2. Pretrain the tiny config on random crops of the photos (64x64) on the CPU for a few
   minutes, and draw its loss curve. Rerunning resumes (or finds the run finished).
3. Sample from it: completions of real photos cut at half their rows, and unconditional
   images with and without syntax-safe decoding, counting how many decode completely.

  python -m jpeglm.demos --out demo_out                 # digits
  python -m jpeglm.demos --demo photos --out demo_out   # photos
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
from PIL import Image, ImageDraw

from data_pipeline.media_files import builtin_photos
from jpeglm.codecs import JpegCodec, make_codec, open_image
from jpeglm.config_io import load_config
from jpeglm.training.loss_curve import plot_losses
from jpeglm.tokenizer import ByteTokenizer
from data_pipeline.tokenizer_training import codec_streams

PROMPT_RATIOS = (0.25, 0.5, 0.75)


def _grid(rows: list[list[Image.Image]], labels: list[str], tile: int) -> Image.Image:
  pad, head = 4, 16
  grid = Image.new("RGB", (len(labels) * (tile + pad) + pad, head + len(rows) * (tile + pad) + pad),
                   (255, 255, 255))
  draw = ImageDraw.Draw(grid)
  for c, label in enumerate(labels):
    draw.text((pad + c * (tile + pad), 2), label, fill=(0, 0, 0))
  for r, row in enumerate(rows):
    for c, image in enumerate(row):
      grid.paste(image.resize((tile, tile)), (pad + c * (tile + pad), head + pad + r * (tile + pad)))
  return grid


def run_codec_demo(out: str, config_spec: str) -> dict:
  config = load_config(config_spec)
  codec = make_codec(config.codec)
  display = JpegCodec(size=256)
  os.makedirs(out, exist_ok=True)
  paths = builtin_photos()
  print(f"[1/3] {len(paths)} built-in photos from installed packages, "
        f"e.g. {os.path.dirname(paths[0])}")

  start = time.perf_counter()
  streams, _ = codec_streams(config, config.tokenizer.num_files)
  tokenizer_path = os.path.join(out, "tokenizer.model")
  tokenizer = ByteTokenizer.train(streams, config.tokenizer.vocab_size, tokenizer_path)
  print(f"[2/3] tokenizer: vocab {tokenizer.vocab_size} trained on {len(streams)} "
        f"{codec.size}x{codec.size} JPEG streams (random crops and flips of the photos) in "
        f"{time.perf_counter() - start:.1f}s -> {tokenizer_path}")

  print("[3/3] round trip image -> JPEG bytes -> tokens -> bytes -> image")
  print(f"      {'photo':24s} {'size':>9s} {'bytes':>6s} {'tokens':>6s}  lossless")
  totals = {"files": 0, "bytes": 0, "tokens": 0, "lossless": 0}
  rows = []
  for path in paths:
    photo = open_image(path)
    stream = codec.encode(photo)
    ids = tokenizer.encode_document(stream)
    back = tokenizer.decode(ids)
    direct, via_tokens = codec.decode(stream), codec.decode(back)
    lossless = (back == stream and via_tokens.complete
                and np.array_equal(np.asarray(direct.image), np.asarray(via_tokens.image)))
    totals["files"] += 1
    totals["bytes"] += len(stream)
    totals["tokens"] += len(ids)
    totals["lossless"] += lossless
    print(f"      {os.path.basename(path):24s} {'%dx%d' % photo.size:>9s} {len(stream):6d} "
          f"{len(ids):6d}  {'yes' if lossless else 'NO'}")
    if len(rows) < 6:
      big = display.encode(photo)
      rows.append([display.fit(photo), display.decode(big).image,
                   *[display.decode(display.prefix(big, r)).image for r in PROMPT_RATIOS]])
  grid = _grid(rows, ["source", "JPEG q25", *[f"prompt r={r}" for r in PROMPT_RATIOS]], 160)
  grid_path = os.path.join(out, "codec_demo.png")
  grid.save(grid_path)
  print(f"      {totals['files']} files, {totals['bytes']:,} bytes, {totals['tokens']:,} tokens "
        f"({totals['bytes'] / totals['tokens']:.3f} bytes/token), "
        f"{totals['lossless']}/{totals['files']} lossless")
  print(f"wrote {grid_path} (what the model sees at 256x256 q25, and the paper's row-cut prompts)")
  if totals["lossless"] != totals["files"]:
    raise SystemExit("round trip failed for some photos")
  return totals


# The tiny config, tuned to learn visibly within minutes on two CPU cores.
# A time budget keeps `make demo` within minutes on a slow or busy machine.
DEMO_TRAINING = ("--config.train.steps=300", "--config.train.lr=3e-3",
                 "--config.train.time_budget_minutes=6",
                 "--config.train.warmup_steps=30", "--config.train.log_every=10",
                 "--config.train.eval_every=100", "--config.train.checkpoint_every=100")


def run_training_demo(out: str, config_spec: str) -> dict:
  from jpeglm.train import train_and_evaluate

  workdir = os.path.join(out, "run")
  tokenizer = os.path.abspath(os.path.join(out, "tokenizer.model"))  # trained in stage 1
  config = load_config(config_spec, [*DEMO_TRAINING, f"--config.tokenizer.path={tokenizer}"])
  print(f"[train] {config_spec} on {config.data.source}: {config.train.steps} steps of "
        f"{config.train.global_batch}x{config.data.seq_len} tokens -> {workdir}")
  start = time.perf_counter()
  result = train_and_evaluate(config, workdir)
  curve = os.path.join(out, "loss_curve.png")
  plot_losses(workdir, curve, "tiny JPEG-LM on built-in photos (64x64, q25)")
  print(f"[train] {time.perf_counter() - start:.0f}s; wrote {curve}")
  return result


def run_sampling_demo(out: str) -> dict:
  from jpeglm.config_io import apply_overrides, read_config
  from jpeglm.sampling.run import sample_from_workdir

  workdir = os.path.join(out, "run")
  config = read_config(os.path.join(workdir, "config.json"))
  photos = builtin_photos()[:4]
  rates = {}
  for name, overrides, prompts in (
      ("completions", ["--config.sample.syntax_safe=True"], photos),
      ("unconditional_free", ["--config.sample.syntax_safe=False"], []),
      ("unconditional_syntax_safe", ["--config.sample.syntax_safe=True"], [])):
    target = os.path.join(out, "samples", name)
    records = sample_from_workdir(workdir, apply_overrides(config, overrides), target, prompts,
                                  ratio=0.5, num_samples=1 if prompts else 8, seed=0)
    rates[name] = (sum(r["complete"] for r in records), len(records))
    print(f"[sample] {name:26s} {rates[name][0]}/{rates[name][1]} decode completely -> "
          f"{target}/grid.png")
  return rates


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--demo", choices=("digits", "digits-long", "photos", "video"),
                      default="digits")
  parser.add_argument("--out", default="demo_out")
  parser.add_argument("--config", default="configs/jpeglm.py:size=tiny", help="photos only")
  parser.add_argument("--skip-training", action="store_true")
  args = parser.parse_args()
  if args.demo.startswith("digits"):
    from jpeglm.demos import digits as demo_digits
    from jpeglm.errors import JpeglmError
    config_arg, seconds = demo_digits.PRESETS[args.demo]
    try:
      demo_digits.main(args.out, args.skip_training, config_arg, seconds)
    except JpeglmError as e:
      raise SystemExit(f"demo: {e}") from None
    return
  if args.demo == "video":
    from jpeglm.demos import video as demo_video
    from jpeglm.errors import JpeglmError
    try:
      demo_video.main(args.out, args.skip_training)
    except JpeglmError as e:
      raise SystemExit(f"demo: {e}") from None
    return
  started = time.perf_counter()
  run_codec_demo(args.out, args.config)
  if not args.skip_training:
    run_training_demo(args.out, args.config)
    run_sampling_demo(args.out)
  print(f"demo finished in {time.perf_counter() - started:.0f}s; everything is in {args.out}/")


if __name__ == "__main__":
  main()
