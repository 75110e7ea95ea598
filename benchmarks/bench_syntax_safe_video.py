"""H.264-syntax-safe sampling against free sampling, end to end: issue 26's two goals.

  .venv/bin/python benchmarks/bench_syntax_safe_video.py [--samples 4] [--max-new-tokens 1536]
      [--temperatures 0.5,1,1.5,1:0] [--prompt-frames 1] [--max-len 4096]
  # a trained AVC run instead of the random tiny model:
  .venv/bin/python benchmarks/bench_syntax_safe_video.py --workdir demo_out/video/run

The model: by default the tiny AVC config (configs/jpeglm.py:size=tiny,codec=avc: d 64, 2
layers; 64x36 clips, 15 frames at 3 fps, QP 37, 12 macroblocks a frame) with random weights
and `--max-len` context (4,096 as the video demo samples with: RoPE, no parameter depends on
it), a 1,024-token BPE trained on the built-in clips' streams. `--workdir` loads a run's
latest checkpoint, tokenizer and config instead. The prompt is BOS + the first
`--prompt-frames` frames of built-in clip `--clip`, the same for every row; each of the
`--samples` rows (one batch) draws with its own key and generates up to `--max-new-tokens`.

Each setting of `--temperatures` (T, or T:K for top-k K, 0 = no top-k; plain T keeps the
config's top-k, 50) samples the batch twice with the same model, prompt and seed: freely, and
syntax-safe (`jpeglm.sampling.run.build_generator`, a fresh `AvcGrammar` per setting, so its
memos start cold). Both generators are compiled first (`Generator.compile`), so compilation is
not timed.

(a) cost: wall seconds per token (per row and decode step: a batch's step count is its longest
row's) of syntax-safe over free, cold grammar; then, at the config's own setting, a second
syntax-safe batch (seed 1: new samples) through the same, now warm, grammar. "host ms/step"
is the host's part of each step (benchmarks/timed_grammar.py): with host draws (no top-p:
every setting here) the draws, their grammar checks and any full-mask fallback, from the
moment the step's candidates reach the host; the device waits meanwhile
(jpeglm/sampling/host_draws.py). "host draws": the share of row-steps the candidates settled
(the rest drew with the full mask).
(b) validity, as `jpeglm sample` judges it (jpeglm.sampling.video_files): a syntax-safe sample
cut short by the context is cut back to its whole frames (`sample_stream`); "clean" = every
token stands for bytes and PyAV decodes the stream completely with zero FFmpeg error lines
(issue 26's goal); "valid" = clean and at least one frame beyond the prompt (`verdict`).
Each row that is not clean is listed with the decoder's reason. Free samples are judged as sampled.
One run per figure; on a shared CPU timings vary +-20%.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
from flax import nnx  # noqa: E402

from configs.jpeglm import MODEL_SIZES, get_config  # noqa: E402
from data_pipeline.media_files import builtin_videos  # noqa: E402
from jpeglm.codecs import AvcCodec, make_codec  # noqa: E402
from jpeglm.model.transformer import ModelConfig, Transformer  # noqa: E402
from timed_grammar import host_timer  # noqa: E402  (benchmarks/, this script's folder)
from jpeglm.sampling import video_files  # noqa: E402
from jpeglm.sampling.run import build_generator, load_run  # noqa: E402
from jpeglm.tokenizer import ByteTokenizer  # noqa: E402


@dataclasses.dataclass
class Batch:
  """One timed batch of samples, judged."""
  seconds: float
  steps: int  # decode steps: the longest row's tokens
  rows: int
  grammar_seconds: float
  clean: int  # only byte tokens, decodes completely, no FFmpeg error line
  valid: int  # clean and at least one frame beyond the prompt
  frames_added: list[int]
  ended_with_eos: int
  failures: list[str]  # why rows were not clean

  @property
  def ms_per_token(self) -> float:
    return self.seconds / max(self.steps * self.rows, 1) * 1e3


def parse_settings(text: str, default_top_k: int) -> list[tuple[float, int]]:
  """"0.5,1,1:0" -> [(0.5, K), (1.0, K), (1.0, 0)]: T, or T:top-k (0 = no top-k)."""
  out = []
  for item in (s.strip() for s in text.split(",")):
    if item:
      t, _, k = item.partition(":")
      out.append((float(t), int(k) if k else default_top_k))
  return out


def clean(decoded, only_bytes: bool) -> bool:
  return only_bytes and decoded.complete and not decoded.errors


def judge(codec: AvcCodec, tokenizer: ByteTokenizer, g, syntax_safe: bool,
          prompt_frames: int) -> tuple[bool, bool, int, str]:
  """(clean, valid, frames beyond the prompt, why not clean) of one sample, as `jpeglm
  sample` sees it."""
  data, only_bytes = video_files.sample_stream(codec, tokenizer, g, syntax_safe)
  decoded = video_files.decode_sample(codec, data)
  valid, _ = video_files.verdict(decoded, only_bytes, prompt_frames)
  why = "" if clean(decoded, only_bytes) else (
      f"{decoded.reason or 'not bytes'} ({'EOS' if g.ended_with_eos else 'cut by the context'},"
      f" {len(data)} bytes; ends {data[-8:].hex()})")
  return (clean(decoded, only_bytes), valid, max(len(decoded.frames or []) - prompt_frames, 0),
          why)


def run_batch(generator, codec, tokenizer, prompts, seed: int, new: int,
              prompt_frames: int, timer=None) -> Batch:
  """`timer` (`host_timer`'s, syntax-safe only): the host's seconds."""
  if timer is not None:
    timer.seconds = 0.0
  started = time.perf_counter()
  generations = generator.generate(prompts, seed=seed, max_new_tokens=new)
  seconds = time.perf_counter() - started
  safe = generator.grammar is not None
  judged = [judge(codec, tokenizer, g, safe, prompt_frames) for g in generations]
  return Batch(seconds, max(len(g.tokens) for g in generations), len(prompts),
               timer.seconds if timer is not None else 0.0,
               sum(j[0] for j in judged), sum(j[1] for j in judged), [j[2] for j in judged],
               sum(g.ended_with_eos for g in generations), [j[3] for j in judged if j[3]])


def drawn_share(generator) -> str:
  """Host draws' share of row-steps so far, e.g. "93%" ("-" without host draws)."""
  d = generator.draws
  if d is None or not d.host_rows + d.full_rows:
    return "-"
  return f"{100 * d.host_rows / (d.host_rows + d.full_rows):.0f}%"


def random_model(args):
  """The tiny AVC config at --max-len, random weights, a BPE of the built-in clips; the
  model's dimensions those of --model-size."""
  config = get_config("size=tiny,codec=avc")
  d_model, n_layers, n_heads, n_kv_heads, d_ff = MODEL_SIZES[args.model_size]
  config.model.update(d_model=d_model, n_layers=n_layers, n_heads=n_heads,
                      n_kv_heads=n_kv_heads, d_ff=d_ff)
  codec = make_codec(config.codec)
  streams = [codec.encode(p) for p in builtin_videos()]
  tokenizer = ByteTokenizer.train(streams, config.tokenizer.vocab_size,
                                  os.path.join(tempfile.mkdtemp(), "avc.model"))
  config.model.vocab_size = tokenizer.vocab_size
  config.model.max_len = args.max_len
  cfg = ModelConfig.from_config(config.model)
  params = nnx.to_pure_dict(nnx.split(Transformer(cfg, nnx.Rngs(0)))[1])
  return config, params, tokenizer, None, f"random weights ({args.model_size} dimensions)"


def trained_model(args):
  from jpeglm.config_io import read_config
  from jpeglm.runtime import files
  from jpeglm.training.run_setup import CONFIG_FILE

  config = read_config(files.join(args.workdir, CONFIG_FILE))
  run = load_run(args.workdir, config)
  config.model.max_len = args.max_len
  return config, run.params, run.tokenizer, run.mesh, f"{args.workdir} step {run.step}"


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--workdir", default=None, help="a trained AVC run (default: random tiny)")
  parser.add_argument("--samples", type=int, default=4, help="rows per batch")
  parser.add_argument("--max-new-tokens", type=int, default=1536)
  parser.add_argument("--max-len", type=int, default=4096, help="the model's context")
  parser.add_argument("--lazy-masks", action="store_true",
                      help="syntax-safe through lazy masks instead of host draws (the same "
                      "tokens; the cost before host draws), top-k settings only")
  parser.add_argument("--model-size", default="tiny", choices=("tiny", "small"),
                      help="dimensions of the random model (configs/jpeglm.py MODEL_SIZES); the "
                      "clips stay the tiny config's")
  parser.add_argument("--temperatures", default="0.5,1,1.5,1:0",
                      help="T or T:top-k (0: no top-k), comma-separated")
  parser.add_argument("--prompt-frames", type=int, default=1)
  parser.add_argument("--clip", type=int, default=0, help="built-in clip of the prompt")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  config, params, tokenizer, mesh, source = (trained_model if args.workdir else random_model)(args)
  codec = make_codec(config.codec)
  if not isinstance(codec, AvcCodec):
    raise SystemExit(f"{args.workdir}: codec.name={config.codec.name}, not avc")
  stream = codec.encode(builtin_videos()[args.clip])
  prompt = [tokenizer.bos_id, *tokenizer.encode(codec.prefix(stream, args.prompt_frames))]
  prompts = [prompt] * args.samples
  new = min(args.max_new_tokens, config.model.max_len - len(prompt))
  own = (float(config.sample.temperature), int(config.sample.top_k))
  settings = parse_settings(args.temperatures, own[1])
  print(f"{codec}, {codec.mbs_per_frame} macroblocks a frame; model d {config.model.d_model}, "
        f"{config.model.n_layers} layers, vocab {tokenizer.vocab_size}, context "
        f"{config.model.max_len}, {source}; prompt: BOS + {args.prompt_frames} frame(s) of "
        f"{os.path.basename(builtin_videos()[args.clip])} = {len(prompt)} tokens; "
        f"{args.samples} rows x up to {new} new tokens; jax {jax.__version__} on "
        f"{jax.devices()[0].device_kind}; load average "
        f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
  print(f"{'T':>4s} {'top-k':>5s} | {'free ms/tok':>11s} {'safe ms/tok':>11s} {'safe/free':>9s} "
        f"{'host ms/step':>12s} {'host draws':>10s} | {'free clean':>10s} {'free valid':>10s} | "
        f"{'safe clean':>10s} {'safe valid':>10s} {'frames added':>12s} "
        f"{'EOS':>4s} {'compile s':>9s}")
  warm_line, failures = None, []
  for temperature, top_k in settings:
    setting = config.copy_and_resolve_references()
    setting.sample.temperature, setting.sample.top_k = temperature, top_k
    free = build_generator(params, setting, tokenizer, codec, False, mesh)
    # --lazy-masks: masks over each row's candidates instead of host draws (Generator.lazy)
    safe = build_generator(params, setting, tokenizer, codec, True, mesh,
                           host_draws=not args.lazy_masks)
    timer = host_timer(safe)  # a fresh AvcGrammar: cold
    compile_s = free.compile(len(prompts), len(prompt), new)
    compile_s += safe.compile(len(prompts), len(prompt), new)
    f = run_batch(free, codec, tokenizer, prompts, args.seed, new, args.prompt_frames)
    s = run_batch(safe, codec, tokenizer, prompts, args.seed, new, args.prompt_frames, timer)
    n = args.samples
    print(f"{temperature:4.1f} {top_k:5d} | {f.ms_per_token:11.3f} {s.ms_per_token:11.3f} "
          f"{s.ms_per_token / f.ms_per_token:8.2f}x "
          f"{s.grammar_seconds / max(s.steps, 1) * 1e3:12.2f} {drawn_share(safe):10s} | {f.clean:6d}/{n:<3d} "
          f"{f.valid:6d}/{n:<3d} | {s.clean:6d}/{n:<3d} "
          f"{s.valid:6d}/{n:<3d} {','.join(map(str, s.frames_added)):>12s} "
          f"{s.ended_with_eos:4d} {compile_s:9.1f}", flush=True)
    failures += [f"T {temperature} top-k {top_k}: {why}" for why in s.failures]
    if (temperature, top_k) == own and warm_line is None:
      w = run_batch(safe, codec, tokenizer, prompts, args.seed + 1, new, args.prompt_frames,
                    timer)
      warm_line = (f"warm grammar (T {temperature}, top-k {top_k}; the same AvcGrammar's second "
                   f"batch, seed {args.seed + 1}): safe {w.ms_per_token:.3f} ms/token, "
                   f"{w.ms_per_token / f.ms_per_token:.2f}x free, host "
                   f"{w.grammar_seconds / max(w.steps, 1) * 1e3:.2f} ms/step; clean "
                   f"{w.clean}/{n}, valid "
                   f"{w.valid}/{n}, frames added {','.join(map(str, w.frames_added))}")
      failures += [f"warm T {temperature} top-k {top_k}: {why}" for why in w.failures]
  if warm_line:
    print(warm_line)
  for line in failures:
    print(f"syntax-safe row not clean: {line}")
  print("ms/tok: wall ms per row per decode step (compilation excluded); safe/free goal: at "
        "most 1.5x. clean: decodes with no FFmpeg error line (goal: every syntax-safe sample); "
        "valid: "
        "clean and adds a frame to the prompt. frames added: per syntax-safe row. EOS: "
        "syntax-safe rows that finished the clip.")


if __name__ == "__main__":
  main()
