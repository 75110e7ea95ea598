"""Images/s of JpegCodec.encode + ByteTokenizer.encode on one core, against the bare library
calls doing the same work (Pillow resize + JPEG save, SentencePiece encode), so the overhead
of our layer is visible. Target: our layer adds under 20%.

  .venv/bin/python benchmarks/bench_codec_tokenize.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import tempfile
import time

import sentencepiece as spm
from PIL import Image, ImageOps

from data_pipeline.media_files import builtin_photos
from jpeglm.codecs import JpegCodec, open_image
from jpeglm.tokenizer import ByteTokenizer, bytes_to_text


def _time(fn, rounds: int) -> float:
  """Median seconds of one call of fn over `rounds` runs (after one warm-up)."""
  fn()
  times = []
  for _ in range(rounds):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--rounds", type=int, default=7)
  args = parser.parse_args()
  os.environ.setdefault("OMP_NUM_THREADS", "1")

  photos = [open_image(p) for p in builtin_photos()]
  codec = JpegCodec()
  streams = [codec.encode(p) for p in photos]
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = ByteTokenizer.train(streams, 320, os.path.join(tmp, "bench.model"))
  sp = spm.SentencePieceProcessor(model_proto=tokenizer.serialized())
  texts = [bytes_to_text(s) for s in streams]
  save = dict(format="JPEG", quality=25, subsampling="4:2:0", optimize=False,
              restart_marker_blocks=1, streamtype=2)

  def bare_pillow():
    for photo in photos:
      rgb = photo if photo.mode == "RGB" else photo.convert("RGB")
      out = io.BytesIO()
      ImageOps.fit(rgb, (256, 256), Image.Resampling.BICUBIC).save(out, **save)

  def bare_sentencepiece():
    for text in texts:
      sp.encode(text)

  def ours_codec():
    for photo in photos:
      codec.encode(photo)

  def ours_tokenizer():
    for stream in streams:
      tokenizer.encode(stream)

  def ours_full():
    for photo in photos:
      tokenizer.encode(codec.encode(photo))

  n = len(photos)
  t_pillow, t_sp = _time(bare_pillow, args.rounds), _time(bare_sentencepiece, args.rounds)
  t_codec, t_tok = _time(ours_codec, args.rounds), _time(ours_tokenizer, args.rounds)
  t_full = _time(ours_full, args.rounds)
  tokens = sum(len(tokenizer.encode(s)) for s in streams)
  bare = t_pillow + t_sp
  print(f"{n} built-in photos, "
        f"{sum(len(s) for s in streams) / n:,.0f} bytes and {tokens / n:,.0f} tokens per image, 1 core")
  print(f"{'path':44s} {'ms/image':>9s} {'images/s':>9s}")
  rows = [("bare Pillow fit + JPEG save", t_pillow), ("bare SentencePiece encode", t_sp),
          ("bare total", bare), ("JpegCodec.encode", t_codec), ("ByteTokenizer.encode", t_tok),
          ("ours: JpegCodec.encode + ByteTokenizer.encode", t_full)]
  for name, t in rows:
    print(f"{name:44s} {1000 * t / n:9.2f} {n / t:9.1f}")
  print(f"overhead of our layer over the bare calls: {100 * (t_full / bare - 1):+.1f}% "
        f"(codec {100 * (t_codec / t_pillow - 1):+.1f}%, tokenizer {100 * (t_tok / t_sp - 1):+.1f}%)"
        f"; target < +20%")


if __name__ == "__main__":
  main()
