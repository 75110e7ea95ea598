"""`jpeglm train --config CFG --workdir DIR [--config.k=v ...]`: pretrain; a rerun resumes."""

from __future__ import annotations


def register(subparsers) -> None:
  from jpeglm.runtime import distributed

  parser = subparsers.add_parser("train", help="pretrain a model; rerunning resumes")
  parser.add_argument("--config", required=True, help="configs/jpeglm.py[:size=...,codec=...]")
  parser.add_argument("--workdir", required=True, help="run directory (local path or gs://)")
  distributed.add_arguments(parser)
  parser.set_defaults(func=_run, accepts_overrides=True)


def _run(args, overrides) -> int:
  from jpeglm.runtime import distributed
  from jpeglm.config_io import load_config

  config = load_config(args.config, overrides)
  distributed.initialize(args)
  import jax

  from jpeglm.training import faults
  from jpeglm.training.trainer import train_and_evaluate

  result = train_and_evaluate(config, args.workdir, faults.from_env(jax.process_index()))
  if result and jax.process_index() == 0:
    shown = {k: float(f"{v:.4g}") if isinstance(v, float) else v for k, v in result.items()}
    print(f"done: {shown}")
  return 0
