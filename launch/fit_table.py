"""Prints launch/README.md's table of the paper's 7B models on TPU slices (real AOT compiles).

Each row is `jpeglm compile-check` of `configs/jpeglm.py:size=7b,codec=...` with the
overrides shown: the train step of `jpeglm train` compiled by libtpu for the slice on this
machine (no TPU needed: pip install 'jpeglm[tpu]'). Memory is the compiler's; step time
and MFU are labelled estimates from the compiled programs' FLOPs and HBM bytes against the
chip's published peaks (jpeglm.fit.step_cost), ignoring communication: a floor and a ceiling.

  .venv/bin/python launch/fit_table.py [--only jpeg|avc] [--rows N,N]

Several minutes on 2 cores (the 256-chip slices take longest).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# (codec, slice, overrides): the goals of the paper-scale-fit issue, each with the layout
# chosen for it, then the layouts they replace, for contrast.
ROWS = [
    ("jpeg", "v5p-8", {"model.remat": "full", "train.grad_accum": 4}),
    ("jpeg", "v5p-16", {"model.remat": "full", "train.grad_accum": 2}),
    ("jpeg", "v4-64", {"model.remat": "full"}),
    ("jpeg", "v6e-64", {"model.remat": "save_qkv_proj"}),
    ("jpeg", "v5e-256", {"model.remat": "full", "train.global_batch": 256}),
    ("avc", "v5p-32", {"model.remat": "full", "train.grad_accum": 2}),
    ("avc", "v4-128", {"model.remat": "full"}),
    # 64 rows on 128 chips: the sequence split in two (context parallelism) keeps every chip busy.
    ("avc", "v4-256", {"model.remat": "full", "mesh.context": 2}),
    # Contrast: XLA attention (the TPU path before splash) keeps L x L scores per head.
    ("jpeg", "v5p-16", {"model.attention": "xla", "model.remat": "full", "train.grad_accum": 2}),
    ("avc", "v5p-32", {"model.attention": "xla", "model.remat": "full", "train.grad_accum": 2}),
]


def row_line(codec: str, topology: str, overrides: dict, estimate: bool) -> str:
  from jpeglm.fit.chips import GIB
  from jpeglm.fit.compile_check import check
  from jpeglm.config_io import load_config

  config = load_config(f"configs/jpeglm.py:size=7b,codec={codec}",
                       [f"--config.{k}={v}" for k, v in overrides.items()])
  r = check(config, topology, estimate=estimate)
  gib = lambda b: "?" if b is None else f"{b / GIB:,.1f}"
  mesh = " ".join(f"{k}={v}" for k, v in r.mesh.items() if v > 1) or "1 device"
  verdict = {True: "**fits**", False: "does not fit", None: "?"}[r.fits]
  floor = f"{r.step_seconds_floor:.2f}" if r.step_seconds_floor else "-"
  mfu = f"{100 * r.mfu_ceiling:.0f}%" if r.mfu_ceiling else "-"
  tokens = config.train.global_batch * config.data.seq_len
  per_chip = f"{tokens / r.step_seconds_floor / r.num_devices:,.0f}" if r.step_seconds_floor \
      else "-"
  return (f"| {codec.upper()} L={config.data.seq_len:,} | {topology} | "
          f"{config.train.global_batch} | {mesh} | {r.remat} | {config.train.grad_accum} | "
          f"{r.attention} | {gib(r.param_bytes + r.opt_bytes)} | {gib(r.temp_bytes)} | "
          f"{gib(r.peak_bytes)} | {gib(r.hbm_bytes)} | {verdict} | {floor} | {per_chip} | "
          f"{mfu} |")


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--only", choices=("jpeg", "avc"))
  p.add_argument("--rows", default="", help="comma-separated row numbers (0-based)")
  p.add_argument("--no-estimate", action="store_true", help="memory only (faster)")
  args = p.parse_args()
  picked = [int(i) for i in args.rows.split(",") if i] or range(len(ROWS))
  print("| model | slice | global batch | mesh | remat | grad accum | attention | "
        "params + AdamW GiB | temporaries GiB | peak GiB | HBM GiB | verdict | "
        "step >= s (est.) | tokens/s/chip <= (est.) | MFU <= (est.) |")
  print("|" + "---|" * 15)
  for i in picked:
    codec, topology, overrides = ROWS[i]
    if args.only and codec != args.only:
      continue
    began = time.perf_counter()
    print(row_line(codec, topology, overrides, not args.no_estimate), flush=True)
    print(f"row {i}: {time.perf_counter() - began:.0f} s", file=sys.stderr)


if __name__ == "__main__":
  main()
