"""One row of the digits frontier: train `configs/digits.py:ARG` for a time budget (the digits
demo's own fitting of steps to the machine), sample, score, and print the row:

  budget | config | held-out bits/byte | strokes' bits/byte | byte n-gram strokes' bits/byte |
  unconditional confident >= 0.9 | completions read as the prompt's digit

  python benchmarks/bench_digits_frontier.py --arg side=16,quality=10,augment=affine \\
      --minutes 8 --out /tmp/frontier/a [--grid docs/frontier/a.png]

The n-gram is the best of orders 2-6 (jpeglm.evaluation.byte_ngram) on the same held-out
digits, so the row shows what the model knows beyond local byte statistics.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jpeglm.codecs import make_codec  # noqa: E402
from jpeglm.config_io import load_config  # noqa: E402
from jpeglm.demos import digits  # noqa: E402
from jpeglm.evaluation import stream_parts  # noqa: E402
from jpeglm.evaluation.byte_ngram import ByteNgram  # noqa: E402

HELD_OUT = 200  # the same held-out digits demo's bits_by_part reads


def ngram_strokes(arg: str) -> tuple[int, float]:
  """(best order, strokes' bits per byte) of a byte n-gram on the demo's held-out digits."""
  config = load_config(digits.config_path() + (f":{arg}" if arg else ""))
  splits = digits.Splits(config)
  codec = make_codec(config.codec)
  train = [codec.encode(splits.images[i]) for i in splits.train]
  held = [codec.encode(splits.images[i]) for i in [*splits.prompts, *splits.scorer][:HELD_OUT]]
  best = None
  for order in range(2, 7):
    model = ByteNgram(train, order)
    parts = stream_parts.byte_bits_by_part(held, [model.bits(s) for s in held])
    strokes = parts["detailed_mcus"]["bits_per_byte"]
    if best is None or strokes < best[1]:
      best = (order, strokes)
  return best


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--arg", default="", help="configs/digits.py argument")
  parser.add_argument("--minutes", type=float, default=3.0, help="training budget")
  parser.add_argument("--out", required=True)
  parser.add_argument("--grid", default="", help="copy the unconditional grid here")
  parser.add_argument("--samples", type=int, default=128,
                      help="unconditional samples scored (the share's standard error at 10%%: "
                           "2.7 points for 128)")
  parser.add_argument("--skip-training", action="store_true",
                      help="score the run already in --out again")
  args = parser.parse_args()
  began = time.perf_counter()
  summary = digits.main(args.out, args.skip_training, args.arg, 60.0 * args.minutes,
                        args.samples)
  order, ngram = ngram_strokes(args.arg)
  samples = summary["samples"]
  strokes = samples["bits_by_part"]["detailed_mcus"]["bits_per_byte"]
  row = {"budget": f"{args.minutes:g} CPU min ({os.cpu_count()} cores, {platform.processor() or platform.machine()})",
         "config": f"configs/digits.py:{args.arg}", "steps": summary["step"],
         "unconditional_samples": args.samples,
         "held_out_bits_per_byte": summary["held_out_bits_per_byte"],
         "strokes_bits_per_byte": strokes, "ngram_strokes_bits_per_byte": ngram,
         "ngram_order": order, "unconditional_confident": summary["unconditional_confident"],
         "completions_right": summary["completions_right"],
         "scorer_real_confident": summary["scorer_real_confident"],
         "load_average": summary["load_average"], "wall_seconds": time.perf_counter() - began}
  if args.grid:
    os.makedirs(os.path.dirname(args.grid) or ".", exist_ok=True)
    shutil.copy(os.path.join(args.out, "samples", "unconditional_syntax_safe", "grid.png"),
                args.grid)
  with open(os.path.join(args.out, "frontier_row.json"), "w") as f:
    json.dump(row, f, indent=1)
  print(json.dumps(row))
  print(f"| {row['budget']} | `{row['config']}` | {row['steps']} | "
        f"{row['held_out_bits_per_byte']:.3f} | {strokes:.2f} | {ngram:.2f} (order {order}) | "
        f"{row['unconditional_confident']:.0%} | {row['completions_right']:.0%} |")


if __name__ == "__main__":
  main()
