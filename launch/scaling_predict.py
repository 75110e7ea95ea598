"""Predicted scaling on TPU slices: the best `jpeglm plan` layout at each chip count.

  python launch/scaling.py --predict --config configs/jpeglm.py:size=7b,codec=jpeg \
      --topology v5p --chips 16,32,64,128,256,512,1024 [--global-batch 64] \
      [--per-chip-batch 4] [--mode weak|strong|both] [--out DIR] [--max-compiles 4]

For every chip count the slice (v5p-2N for N chips: Cloud names count TensorCores) is
searched by `jpeglm.fit.plan`: mesh, micro-batching and remat, each candidate compiled ahead of
time with libtpu and ranked by its estimated step time (compiled FLOPs and HBM bytes against
the chip's peaks, compiled collectives against its ICI bandwidth; see jpeglm/fit/plan.py). The
best that fits gives the point:
  - strong scaling: the global batch fixed (--global-batch, default the config's);
  - weak scaling: --per-chip-batch rows per chip (default: the strong batch / the smallest
    chip count), the global batch growing with the slice.
Efficiency is tokens/s per chip relative to the smallest chip count of the same mode.
Two bounds: the plan's estimate hides ICI collectives under compute (XLA overlaps them on
TPU); the `_no_overlap` columns pay for them in full after compute. A real step lies
between, and below both by however far the kernels fall short of the chip's peaks.
DIR/predicted_scaling.csv and .png hold the points; every figure is an estimate from real
compiles, not a measurement. Compile results are cached (--cache), so a rerun or a longer
--chips list only compiles what is new.
"""

from __future__ import annotations

import argparse
import csv
import os
from collections.abc import Sequence

FIELDS = ("mode", "chips", "topology", "global_batch", "layout", "remat", "grad_accum",
          "peak_gib", "step_seconds", "tokens_per_s_per_chip", "mfu_ceiling", "efficiency",
          "step_seconds_no_overlap", "tokens_per_s_per_chip_no_overlap",
          "efficiency_no_overlap", "compute_s", "hbm_s", "ici_s", "flags")


def topology_name(generation: str, chips: int) -> str:
  """Cloud TPU slice name for `chips` chips: v5p/v4 names count TensorCores (2 per chip)."""
  from jpeglm.errors import ConfigError
  from jpeglm.fit.chips import ALIASES, TPUS

  gen = ALIASES.get(generation.lower(), generation.lower())
  if gen not in TPUS:
    raise ConfigError(f"--topology {generation!r}: expected a TPU generation such as v5p, "
                      f"v4, v5e, v6e")
  return f"{gen}-{chips * TPUS[gen].cores_per_unit}"


def best_point(config, topology: str, global_batch: int, args, log=print) -> dict | None:
  from jpeglm.fit.chips import GIB
  from jpeglm.fit.plan import plan

  results = plan(config, topology, global_batch=global_batch, top=args.top,
                 max_compiles=args.max_compiles, jobs=args.jobs, cache_path=args.cache,
                 log=log)
  ranked = [r for r in results if r.fits is not False and r.step_seconds]
  if not ranked:
    return None
  r = ranked[0]
  c = r.candidate
  # The plan assumes ICI collectives hidden under compute (XLA overlaps them on TPU); the
  # other bound pays for them in full after compute.
  serial = max(r.compute_seconds, r.hbm_seconds) + r.ici_seconds + (r.dcn_seconds or 0.0)
  return {"step_seconds_no_overlap": serial,
          "tokens_per_s_per_chip_no_overlap": r.tokens_per_chip * r.step_seconds / serial,
          "topology": topology, "global_batch": global_batch,
          "layout": f"data{c.data} fsdp{c.fsdp} context{c.context} tensor{c.tensor}",
          "remat": c.remat, "grad_accum": c.grad_accum, "peak_gib": r.peak_bytes / GIB,
          "step_seconds": r.step_seconds, "tokens_per_s_per_chip": r.tokens_per_chip,
          "mfu_ceiling": r.mfu, "compute_s": r.compute_seconds, "hbm_s": r.hbm_seconds,
          "ici_s": r.ici_seconds, "flags": c.flags()}


def add_efficiency(points: list[dict]) -> None:
  for suffix in ("", "_no_overlap"):
    base = points[0]["tokens_per_s_per_chip" + suffix]
    for p in points:
      p["efficiency" + suffix] = p["tokens_per_s_per_chip" + suffix] / base


def write_csv(path: str, results: dict[str, list[dict]]) -> None:
  with open(path, "w", newline="") as f:
    writer = csv.DictWriter(f, fieldnames=FIELDS, extrasaction="ignore")
    writer.writeheader()
    for points in results.values():
      writer.writerows(points)


def plot(results: dict[str, list[dict]], path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  fig, (ax_t, ax_e) = plt.subplots(1, 2, figsize=(10, 4))
  for (mode, points), color in zip(results.items(), ("tab:blue", "tab:green")):
    if not points:
      continue
    n = [p["chips"] for p in points]
    for suffix, style, note in (("", "o-", ""), ("_no_overlap", "x--", ", ICI not overlapped")):
      label = f"{mode} scaling{note}"
      ax_t.plot(n, [p["tokens_per_s_per_chip" + suffix] for p in points], style, label=label,
                color=color)
      ax_e.plot(n, [p["efficiency" + suffix] for p in points], style, label=label,
                color=color)
  ax_e.axhline(1.0, color="grey", lw=0.8, ls="--")
  for ax, label in ((ax_t, "est. tokens/s per chip"), (ax_e, "est. scaling efficiency")):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("chips (one slice)")
    ax.set_ylabel(label)
    ax.legend(fontsize=7)
  fig.suptitle(title + " (estimates from AOT compiles)", fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv: Sequence[str], overrides: Sequence[str]) -> int:
  parser = argparse.ArgumentParser(prog="launch/scaling.py --predict", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--predict", action="store_true")
  parser.add_argument("--config", required=True)
  parser.add_argument("--topology", default="v5p", help="TPU generation: v5p, v4, v5e, v6e")
  parser.add_argument("--chips", default="16,32,64,128,256,512,1024")
  parser.add_argument("--global-batch", type=int, default=None,
                      help="strong scaling batch (default: the config's train.global_batch)")
  parser.add_argument("--per-chip-batch", type=int, default=None,
                      help="weak scaling rows per chip (default: strong batch / fewest chips)")
  parser.add_argument("--mode", choices=("weak", "strong", "both"), default="both")
  parser.add_argument("--top", type=int, default=2, help="plan: stop after this many fit")
  parser.add_argument("--max-compiles", type=int, default=4, help="plan: per chip count")
  parser.add_argument("--jobs", type=int, default=1, help="plan: compiles at once")
  parser.add_argument("--cache", default=os.path.join(
      os.path.expanduser("~"), ".cache", "jpeglm", "plan.json"))
  parser.add_argument("--out", default="scaling_out")
  args = parser.parse_args(argv)
  counts = sorted({int(x) for x in args.chips.split(",") if x.strip()})
  if not counts or counts[0] < 1:
    parser.error("--chips needs positive chip counts")

  import importlib.util

  from jpeglm.config_io import load_config
  from jpeglm.errors import JpeglmError

  if importlib.util.find_spec("libtpu") is None:
    raise SystemExit("scaling --predict compiles for TPU slices ahead of time and needs "
                     "libtpu: pip install '.[tpu]' (no TPU needed)")
  config = load_config(args.config, list(overrides))
  strong_batch = args.global_batch or config.train.global_batch
  per_chip = args.per_chip_batch or max(1, strong_batch // counts[0])
  modes = ("strong", "weak") if args.mode == "both" else (args.mode,)
  os.makedirs(args.out, exist_ok=True)
  results: dict[str, list[dict]] = {mode: [] for mode in modes}
  csv_path = os.path.join(args.out, "predicted_scaling.csv")
  png_path = os.path.join(args.out, "predicted_scaling.png")
  # Chip counts outermost: an interrupted sweep still holds both modes up to some size,
  # and the CSV and plot are rewritten after every point.
  for chips in counts:
    for mode in modes:
      batch = strong_batch if mode == "strong" else per_chip * chips
      topology = topology_name(args.topology, chips)
      print(f"# {mode}: {topology} ({chips} chips), global batch {batch}", flush=True)
      try:
        point = best_point(config, topology, batch, args)
      except JpeglmError as e:
        print(f"  no layout: {e}")
        point = None
      if point is None:
        print(f"  nothing compiled fits {topology} at global batch {batch}: point left out")
        continue
      results[mode].append({"mode": mode, "chips": chips, **point})
      add_efficiency(results[mode])
      write_csv(csv_path, results)
      plot(results, png_path, f"{args.config} {' '.join(overrides)} on {args.topology}")
  print("\nmode   | chips | global batch | layout | remat | ga | peak GiB | est. step s | "
        "est. tokens/s/chip | est. MFU | efficiency | without ICI overlap: tokens/s/chip, "
        "efficiency")
  for mode, points in results.items():
    for p in points:
      print(f"{mode:6s} | {p['chips']:5d} | {p['global_batch']:5d} | {p['layout']} | "
            f"{p['remat']} | {p['grad_accum']} | {p['peak_gib']:.1f} | "
            f"{p['step_seconds']:.2f} | {p['tokens_per_s_per_chip']:,.0f} | "
            f"{100 * p['mfu_ceiling']:.0f}% | {p['efficiency']:.2f} | "
            f"{p['tokens_per_s_per_chip_no_overlap']:,.0f}, {p['efficiency_no_overlap']:.2f}")
  print(f"wrote {csv_path} and {png_path}")
  return 0 if all(len(results.get(m, [])) == len(counts) for m in modes) else 1
