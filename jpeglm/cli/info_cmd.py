"""`jpeglm info --config CFG [--devices N]`: parameter count and per-device memory."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "info", help="parameter count and per-device memory for the config's mesh",
      description="Builds the config's model abstractly (no allocation) and prints its "
                  "parameter count and the bytes of parameters + AdamW state each device "
                  "holds on the config's mesh.")
  parser.add_argument("--config", required=True, help="configs/jpeglm.py[:size=...,codec=...]")
  parser.add_argument("--devices", type=int, default=None,
                      help="report for a mesh of N devices (default: this machine's devices)")
  parser.set_defaults(func=_info, accepts_overrides=True)


def _info(args: argparse.Namespace, overrides) -> int:
  from jpeglm.config_io import load_config
  from jpeglm.errors import ConfigError
  from jpeglm.fit.memory_report import memory_report

  if args.devices is not None and args.devices < 1:
    raise ConfigError(f"--devices {args.devices}: must be >= 1")
  config = load_config(args.config, overrides)
  for line in memory_report(config, args.devices).lines():
    print(line)
  return 0
