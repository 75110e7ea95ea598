"""Fits the digits frontier: how the strokes' bits per byte and the share of unconditional
samples read as digits move with training compute, from the `frontier_row.json` files that
`bench_digits_frontier.py` writes, and what budget the fit says reaches a goal.

  python benchmarks/frontier_fit.py /tmp/frontier/*/frontier_row.json [--goal 0.5]

Strokes' bits per byte are fitted as a + b log(minutes) (least squares, rows of one config);
the unconditional share as a line in the strokes' bits per byte, which gives the strokes'
bits per byte the goal needs and so the minutes.
"""

from __future__ import annotations

import argparse
import json
import math

import numpy as np


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("rows", nargs="+")
  parser.add_argument("--goal", type=float, default=0.5, help="unconditional share to reach")
  args = parser.parse_args()
  rows = []
  for path in args.rows:
    with open(path) as f:
      row = json.load(f)
    row["minutes"] = float(row["budget"].split()[0])
    rows.append(row)
  rows.sort(key=lambda r: r["minutes"])
  for r in rows:
    print(f"{r['minutes']:>6g} min  {r['config']:<55} strokes {r['strokes_bits_per_byte']:.3f} "
          f"bits/byte  unconditional {r['unconditional_confident']:.0%}  "
          f"completions {r['completions_right']:.0%}")
  if len(rows) < 2:
    print("one row: nothing to fit")
    return
  minutes = np.array([r["minutes"] for r in rows])
  strokes = np.array([r["strokes_bits_per_byte"] for r in rows])
  share = np.array([r["unconditional_confident"] for r in rows])
  slope, intercept = np.polyfit(np.log(minutes), strokes, 1)
  print(f"strokes' bits per byte ~ {intercept:.3f} {slope:+.3f} ln(minutes)")
  if slope < 0:
    for target in (3.0, 2.5, 2.0):
      print(f"  strokes at {target:.1f} bits per byte: about "
            f"{math.exp((target - intercept) / slope):,.0f} minutes (extrapolated)")
  s_slope, s_intercept = np.polyfit(strokes, share, 1)
  # The share must rise as the strokes' bits per byte fall; otherwise the rows do not say
  # where the goal lies, and a fit would only extrapolate noise.
  if s_slope >= 0 or np.ptp(share) < 2 * math.sqrt(0.1 * 0.9 / 128):
    print(f"unconditional share {share.min():.0%}-{share.max():.0%} does not rise with these "
          f"rows beyond sampling noise: no budget for {args.goal:.0%} can be read from them")
    return
  needed = (args.goal - s_intercept) / s_slope
  if needed <= 0:
    print(f"unconditional share {share.min():.0%}-{share.max():.0%}: its trend in these rows "
          f"would need {needed:.1f} bits per byte (below zero) for {args.goal:.0%}; the rows do "
          "not say where the goal lies")
    return
  print(f"unconditional share ~ {s_intercept:.3f} {s_slope:+.3f} x strokes' bits per byte: "
        f"{args.goal:.0%} needs {needed:.3f} bits per byte")
  if slope < 0:
    budget = math.exp((needed - intercept) / slope)
    print(f"-> about {budget:,.0f} minutes of this machine (extrapolated: a fit, not a run)")


if __name__ == "__main__":
  main()
