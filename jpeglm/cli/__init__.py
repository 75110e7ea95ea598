"""The `jpeglm` command line: one subcommand per module, each a thin layer over library code.

Every command module defines `register(subparsers)`, which adds its parser and sets
`func(args, overrides)`. Heavy imports (jax, av, ...) happen inside `func`, so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from jpeglm.config_io import split_overrides
from jpeglm.errors import JpeglmError

# Later issues add their commands here; the order is the order of `jpeglm --help`.
COMMAND_MODULES = (
    "jpeglm.cli.tokenizer_cmd",
    "jpeglm.cli.prepare_cmd",
    "jpeglm.cli.info_cmd",
    "jpeglm.cli.train_cmd",
    "jpeglm.cli.export_cmd",
    "jpeglm.cli.sample_cmd",
    "jpeglm.cli.eval_cmd",
    "jpeglm.cli.compile_check_cmd",
    "jpeglm.cli.plan_cmd",
)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog="jpeglm",
      description="Pretrain codec language models (JPEG-LM, AVC-LM) in JAX.",
      epilog="Commands that read a config accept overrides: --config.section.key=value")
  subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  for name in COMMAND_MODULES:
    importlib.import_module(name).register(subparsers)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides, rest = split_overrides(argv)
  parser = build_parser()
  args = parser.parse_args(rest)
  if overrides and not getattr(args, "accepts_overrides", False):
    parser.error(f"'{args.command}' takes no --config.* overrides (got {overrides[0]})")
  try:
    return int(args.func(args, overrides) or 0)
  except JpeglmError as e:
    print(f"jpeglm: error: {e}", file=sys.stderr)
    return 2
  except OSError as e:  # a path the user gave that cannot be used: a file for a folder, ...
    where = f"{e.filename}: " if e.filename else ""
    print(f"jpeglm: error: {where}{e.strerror or e}", file=sys.stderr)
    return 2
  except KeyboardInterrupt:
    print("jpeglm: interrupted", file=sys.stderr)
    return 130
