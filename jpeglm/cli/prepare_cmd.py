"""`jpeglm prepare --config CFG --out DIR`: encode + tokenize a source once into ArrayRecord shards."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "prepare", help="encode + tokenize a data source once into ArrayRecord shards",
      description="Encodes config.data.source (and its held-out split) with the config's codec, "
                  "tokenizes it with config.tokenizer.path (or a BPE trained from the source "
                  "into DIR when empty) and writes DIR/{train,eval}-NNNNN.arrayrecord.")
  parser.add_argument("--config", required=True, help="configs/jpeglm.py[:size=...,codec=...]")
  parser.add_argument("--out", required=True, help="output folder (new or empty of shards)")
  parser.add_argument("--workers", type=int, default=None,
                      help="encoding processes (default: the machine's cores)")
  parser.add_argument("--records-per-shard", type=int, default=None,
                      help="documents per shard file (default 10,000)")
  parser.set_defaults(func=_prepare, accepts_overrides=True)


def _prepare(args: argparse.Namespace, overrides) -> int:
  from data_pipeline import prepare
  from jpeglm.config_io import load_config
  from jpeglm.errors import JpeglmError

  config = load_config(args.config, overrides)
  workers = os.cpu_count() or 1 if args.workers is None else args.workers
  if workers < 0:
    raise JpeglmError(f"--workers {workers}: must be >= 0")
  summaries = prepare.prepare(
      config, args.out, num_workers=workers,
      records_per_shard=args.records_per_shard or prepare.DEFAULT_RECORDS_PER_SHARD)
  for summary in summaries:
    print(summary.line())
    for error in summary.errors:
      print(f"  skipped {error}")
  print(f"wrote {os.path.abspath(args.out)}; train from it with:")
  print("  " + " ".join(prepare.training_overrides(args.out, summaries)))
  return 0
