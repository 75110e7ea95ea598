"""`jpeglm eval --workdir DIR --images SRC --ratios R,R --num-images N [--seeds S,S]`.

On an AVC run (codec.name=avc) SRC holds videos (`--videos` and `--num-videos` are the same
flags) and the paper's video protocol runs instead: prompt with `--frames` (10) frames,
continue the rest (jpeglm.evaluation.video_protocol); `--ratios` is not used."""

from __future__ import annotations

import os


def _floats(text: str) -> list[float]:
  return [float(x) for x in text.split(",") if x.strip()]


def _ints(text: str) -> list[int]:
  return [int(x) for x in text.split(",") if x.strip()]


def register(subparsers) -> None:
  parser = subparsers.add_parser(
      "eval", help="the paper's prefix-completion protocol: FID, valid-decode rate, bits/byte")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--images", "--videos", dest="images", required=True,
                      help="builtin:photos, a folder of images, wds:GLOB or parquet:GLOB[:COLUMN] "
                           "(a random subset is used); AVC runs: builtin:videos or a folder")
  parser.add_argument("--ratios", type=_floats, default=[0.25, 0.5, 0.75],
                      help="shares of image rows kept as the prompt (paper: 0.25,0.5,0.75)")
  parser.add_argument("--num-images", "--num-videos", dest="num_images", type=int, required=True)
  parser.add_argument("--frames", type=int, default=10,
                      help="AVC runs: frames kept as the prompt (paper: 10 of 15)")
  parser.add_argument("--seeds", type=_ints, default=[0],
                      help="sampling seeds; FID is their mean (paper: 3 seeds)")
  parser.add_argument("--out", default=None, help="default: WORKDIR/eval")
  parser.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  parser.add_argument("--batch-size", type=int, default=8, help="images sampled at once")
  parser.set_defaults(func=_run, accepts_overrides=True)


def _run(args, overrides) -> int:
  from jpeglm.config_io import apply_overrides, read_config
  from jpeglm.evaluation.protocol import evaluate
  from jpeglm.evaluation.report import format_table
  from jpeglm.runtime import files
  from jpeglm.training.run_setup import CONFIG_FILE

  config = apply_overrides(read_config(files.join(args.workdir, CONFIG_FILE)), overrides)
  out = args.out or os.path.join(args.workdir, "eval")
  if config.codec.name == "avc":
    from jpeglm.evaluation.video_protocol import evaluate_videos
    from jpeglm.evaluation.video_report import format_video_table

    report = evaluate_videos(args.workdir, config, args.images, args.num_images, args.seeds, out,
                             args.step, args.batch_size, args.frames)
    print(format_video_table(report))
    print(f"wrote {os.path.join(out, 'eval.json')}")
    return 0
  report = evaluate(args.workdir, config, args.images, args.ratios, args.num_images,
                    args.seeds, out, args.step, args.batch_size)
  print(format_table(report))
  print(f"wrote {os.path.join(out, 'eval.json')}")
  return 0
