"""`jpeglm tokenizer train|inspect`: the byte BPE that turns codec streams into tokens."""

from __future__ import annotations

import argparse
import os


def register(subparsers) -> None:
  parser = subparsers.add_parser("tokenizer", help="train or inspect the byte BPE tokenizer")
  sub = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")

  train = sub.add_parser("train", help="train a SentencePiece BPE on codec streams of a source")
  train.add_argument("--codec", choices=("jpeg", "avc"), default="jpeg")
  train.add_argument("--source", default=None,
                     help="any data source: builtin:photos, builtin:videos, a folder, tfds:..., "
                          "wds:GLOB, parquet:GLOB[:COLUMN] (default: builtin for the codec)")
  train.add_argument("--num-files", type=int, default=10_000, help="files to train on (paper: 10K)")
  train.add_argument("--vocab-size", type=int, default=None, help="default: 320 jpeg, 1024 avc")
  train.add_argument("--out", required=True, help="path of the .model file to write")
  train.add_argument("--config", default=None,
                     help="optional run config whose `codec` section sets the codec")
  train.add_argument("--workers", type=int, default=0,
                     help="Grain worker processes for encoding (0: in this process)")
  train.add_argument("--seed", type=int, default=0)
  train.set_defaults(func=_train, accepts_overrides=True)

  inspect = sub.add_parser("inspect", help="vocabulary, special ids, tokens per file")
  inspect.add_argument("path", help="tokenizer .model file")
  inspect.add_argument("files", nargs="*", help="media files to tokenize")
  inspect.add_argument("--codec", choices=("jpeg", "avc", "raw"), default="jpeg",
                       help="encode files with this codec first (raw: tokenize the file's bytes)")
  inspect.set_defaults(func=_inspect)


def _run_config(args: argparse.Namespace, overrides):
  """The config whose codec and data sections describe what to train on."""
  from jpeglm.config_io import default_config, load_config
  from jpeglm.errors import ConfigError
  from jpeglm.tokenizer import DEFAULT_VOCAB

  if args.config:
    config = load_config(args.config, overrides)
    if config.codec.name != args.codec:
      raise ConfigError(f"--codec {args.codec} but the config's codec.name is {config.codec.name}")
  elif overrides:
    raise ConfigError("--config.* overrides need --config")
  else:
    config = default_config(f"size=7b,codec={args.codec}")  # the paper's codec settings
  with config.unlocked():
    if args.source:
      config.data.source = args.source
    config.tokenizer.num_files = args.num_files
    config.tokenizer.vocab_size = args.vocab_size or DEFAULT_VOCAB[args.codec]
    config.seed = args.seed
  return config


def _train(args: argparse.Namespace, overrides) -> int:
  from tqdm import tqdm

  from data_pipeline.tokenizer_training import codec_streams
  from jpeglm.errors import JpeglmError
  from jpeglm.tokenizer import ByteTokenizer

  config = _run_config(args, overrides)
  if args.num_files < 1:
    raise JpeglmError(f"--num-files {args.num_files}: must be at least 1")
  with tqdm(total=args.num_files, desc=f"encoding {config.data.source}", unit="file") as bar:
    streams, errors = codec_streams(config, args.num_files, args.workers, progress=bar.update)
  for error in errors[:5]:
    print(f"skipped {error}")
  if not streams:
    raise JpeglmError(f"no usable files in {config.data.source} ({len(errors)} skipped)")
  tokenizer = ByteTokenizer.train(streams, config.tokenizer.vocab_size, args.out)
  total_bytes = sum(len(s) for s in streams)
  total_tokens = sum(len(tokenizer.encode(s)) for s in streams)
  print(f"trained {os.path.abspath(args.out)}: vocab {tokenizer.vocab_size}, "
        f"{len(streams)} files ({len(errors)} skipped), {total_bytes:,} bytes, "
        f"{total_tokens / len(streams):,.0f} tokens/file, "
        f"{total_bytes / total_tokens:.3f} bytes/token")
  return 0


def _inspect(args: argparse.Namespace, overrides) -> int:
  from jpeglm.codecs import AvcCodec, CodecError, JpegCodec, open_image
  from jpeglm.tokenizer import ByteTokenizer

  tokenizer = ByteTokenizer.load(args.path)
  lengths = [len(tokenizer.piece_bytes(i)) for i in range(tokenizer.vocab_size)]
  byte_pieces = sum(1 for n in lengths if n == 1)
  print(f"tokenizer   {os.path.abspath(args.path)}")
  print(f"vocab size  {tokenizer.vocab_size} ({byte_pieces} single bytes, "
        f"{sum(1 for n in lengths if n > 1)} merges, longest piece {max(lengths)} bytes)")
  print(f"special ids unk={tokenizer.unk_id} bos={tokenizer.bos_id} eos={tokenizer.eos_id}")
  if not args.files:
    return 0
  codec = {"jpeg": JpegCodec, "avc": AvcCodec, "raw": lambda: None}[args.codec]()
  print(f"{'file':40s} {'bytes':>9s} {'tokens':>9s} {'bytes/token':>11s}")
  totals = [0, 0]
  for path in args.files:
    try:
      if codec is None:
        with open(path, "rb") as f:
          data = f.read()
      elif isinstance(codec, AvcCodec):
        data = codec.encode(path)
      else:
        data = codec.encode(open_image(path))
    except (CodecError, OSError) as e:
      print(f"{os.path.basename(path)[:40]:40s} skipped: {e}")
      continue
    n = len(tokenizer.encode(data))
    totals[0] += len(data)
    totals[1] += n
    print(f"{os.path.basename(path)[:40]:40s} {len(data):9,d} {n:9,d} {len(data) / max(n, 1):11.3f}")
  if totals[1]:
    print(f"{'total':40s} {totals[0]:9,d} {totals[1]:9,d} {totals[0] / totals[1]:11.3f}")
  return 0
