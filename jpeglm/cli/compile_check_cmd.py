"""`jpeglm compile-check --config CFG --topology T`: will this config's train step fit?"""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "compile-check", help="ahead-of-time fit check of the train step on a TPU slice",
      description="Compiles the train step ahead of time for a TPU slice (libtpu, no TPU "
                  "needed: pip install 'jpeglm[tpu]') or this machine's devices, and prints "
                  "per-device memory and whether it fits. Without a TPU compiler it prints an "
                  "analytic estimate, marked as such. Exit status 3 when it does not fit.")
  parser.add_argument("--config", required=True, help="configs/jpeglm.py[:size=...,codec=...]")
  parser.add_argument("--topology", default="local",
                      help="v5p-64, v4-128, v5e-256, v6e-16, ... or 'local' (this machine's "
                           "devices; default)")
  parser.add_argument("--num-slices", type=int, default=1,
                      help="slices joined over the data-centre network (multislice): data "
                           "parallel across them (mesh.dcn_data)")
  parser.add_argument("--analytic", action="store_true",
                      help="skip the compiler: analytic estimate only")
  parser.set_defaults(func=_run, accepts_overrides=True)


def _run(args: argparse.Namespace, overrides) -> int:
  from jpeglm.fit.compile_check import check
  from jpeglm.config_io import load_config

  config = load_config(args.config, overrides)
  report = check(config, args.topology, analytic=args.analytic, num_slices=args.num_slices)
  for line in report.lines():
    print(line)
  return 3 if report.fits is False else 0
