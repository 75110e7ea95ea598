"""`jpeglm sample --workdir DIR [--prompt FILES] [--ratio R] [--num-samples N] [--out DIR]`."""

from __future__ import annotations

import os


def register(subparsers) -> None:
  parser = subparsers.add_parser("sample", help="generate images (or videos) from a checkpoint")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--prompt", nargs="*", default=[],
                      help="images (or videos) to complete; none: unconditional (prompt = BOS)")
  parser.add_argument("--ratio", type=float, default=0.5,
                      help="share of image rows kept as the prompt (paper: 0.25/0.5/0.75)")
  parser.add_argument("--frames", type=int, default=10, help="video prompts: frames kept")
  parser.add_argument("--num-samples", type=int, default=4, help="samples per prompt")
  parser.add_argument("--out", default=None, help="default: WORKDIR/samples")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--seed", type=int, default=None)
  parser.add_argument("--batch-size", type=int, default=8,
                      help="rows sampled at once: continuous-batching slots (sample.continuous)")
  parser.add_argument("--xla-command-buffer", default=None, metavar="KINDS",
                      help="GPU: what XLA records into command buffers (CUDA graphs): 'loops' "
                           "(+WHILE,+CONDITIONAL: the decode loop too), 'off', or kinds such as "
                           "FUSION,CUBLAS,WHILE (jpeglm.runtime.xla_flags); ignored on CPU/TPU")
  parser.set_defaults(func=_run, accepts_overrides=True)


def _run(args, overrides) -> int:
  from jpeglm.runtime.xla_flags import use_command_buffer

  use_command_buffer(args.xla_command_buffer)  # before JAX starts its backend
  from jpeglm.config_io import apply_overrides, read_config
  from jpeglm.runtime import files
  from jpeglm.training.run_setup import CONFIG_FILE
  from jpeglm.sampling.run import sample_from_workdir

  from jpeglm.errors import JpeglmError

  for flag, value in (("--num-samples", args.num_samples), ("--batch-size", args.batch_size)):
    if value < 1:
      raise JpeglmError(f"{flag} {value}: must be >= 1")
  config = apply_overrides(read_config(files.join(args.workdir, CONFIG_FILE)), overrides)
  if not args.out and files.is_url(args.workdir):
    raise JpeglmError(f"--workdir {args.workdir} is a URL: give --out DIR, a local folder for "
                      "the samples")
  out = args.out or os.path.join(args.workdir, "samples")
  records = sample_from_workdir(args.workdir, config, out, args.prompt, args.ratio, args.frames,
                                args.num_samples, args.seed, args.step, args.batch_size)
  complete = sum(r["complete"] for r in records)
  tokens = sum(r["tokens_generated"] for r in records)
  print(f"{len(records)} samples in {out}: {complete}/{len(records)} decode completely, "
        f"{tokens:,} tokens generated; see grid.png and samples.jsonl")
  return 0
