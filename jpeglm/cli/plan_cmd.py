"""`jpeglm plan --config CFG --topology T`: search layouts by real ahead-of-time compiles."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "plan", help="search meshes, micro-batching and remat by AOT compiles; print the best",
      description="Enumerates layouts (mesh data/fsdp/context/tensor, gradient accumulation, "
                  "remat policy), drops those an estimate puts far over HBM, compiles the rest "
                  "ahead of time (libtpu; no TPU needed) in parallel with a cache, and ranks "
                  "those that fit by estimated step time. Prints a table and the winner as "
                  "--config.* overrides for `jpeglm train` and launch/tpu_pod.sh.")
  parser.add_argument("--config", required=True, help="configs/jpeglm.py[:size=...,codec=...]")
  parser.add_argument("--topology", required=True, help="v5p-128, v4-64, ... or 'local'")
  parser.add_argument("--num-slices", type=int, default=1, help="slices joined over DCN")
  parser.add_argument("--global-batch", type=int, default=0, help="default: the config's")
  parser.add_argument("--top", type=int, default=3, help="stop after this many fit")
  parser.add_argument("--max-compiles", type=int, default=12)
  parser.add_argument("--jobs", type=int, default=2, help="compiles at once")
  parser.add_argument("--cache", default=os.path.join(
      os.path.expanduser("~"), ".cache", "jpeglm", "plan.json"), help="compile results cache")
  parser.set_defaults(func=_run, accepts_overrides=True)


def _run(args: argparse.Namespace, overrides) -> int:
  from jpeglm.fit.chips import GIB
  from jpeglm.config_io import load_config
  from jpeglm.fit.plan import plan

  config = load_config(args.config, overrides)
  results = plan(config, args.topology, num_slices=args.num_slices,
                 global_batch=args.global_batch or None, top=args.top,
                 max_compiles=args.max_compiles, jobs=args.jobs, cache_path=args.cache)
  print("\nrank | mesh (dcn_data x data x fsdp x context x tensor) | remat | grad_accum | "
        "peak GiB | fits | est. step s | est. tokens/s/chip | est. MFU | compute/HBM/ICI/DCN s")
  for i, r in enumerate(results, 1):
    c = r.candidate
    est = lambda v, f: "-" if v is None else format(v, f.rstrip("%")) + f[len(f.rstrip("%")):]
    print(f"{i} | {c.dcn_data}x{c.data}x{c.fsdp}x{c.context}x{c.tensor} | {c.remat} | "
          f"{c.grad_accum} | {est(r.peak_bytes and r.peak_bytes / GIB, '.1f')} | "
          f"{ {True: 'yes', False: 'no', None: '?'}[r.fits]} | {est(r.step_seconds, '.2f')} | "
          f"{est(r.tokens_per_chip, ',.0f')} | {est(r.mfu and 100 * r.mfu, '.0f%')} | "
          + "/".join(est(v, ".2f") for v in (r.compute_seconds, r.hbm_seconds, r.ici_seconds,
                                              r.dcn_seconds)))
  best = next((r for r in results if r.fits is not False), None)
  if best is None:
    print("\nnothing that was compiled fits: raise --max-compiles, or use a larger slice")
    return 3
  print(f"\nbest: {best.candidate.flags()}")
  return 0
