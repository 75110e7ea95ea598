"""Sampling at the paper's shape of work, on this machine: ours (JAX, `jpeglm.sampling`) vs
transformers' `generate()` on the same weights, then syntax-safe vs free sampling.

  .venv/bin/python benchmarks/bench_sampling.py [--new-tokens 2048] [--batches 1,8,32]
      [--d-model 256 --layers 4 | --d-model 512 --layers 8 (the small config)]
      [--max-len 12288] [--prompt-ratio 0]
  # on a GPU, the 1b shape in bfloat16 (benchmarks/gpu_checks.sh):
  python benchmarks/bench_sampling.py --d-model 2048 --layers 22 --head-dim 128 \
      --dtype bfloat16 --torch-device cuda --new-tokens 1024 --batches 1,8 --safe-batches ""

The model is the `small` config (Llama layout, vocabulary 320) at the paper's context,
max_len=12288, narrowed by default to d 256 and 4 layers (heads of 64, d_ff 2.75 d) so that
batch 32 x 2,048 tokens on both sides finishes in minutes on 2 cores; random weights (speed
does not depend on the values). Every row's prompt is BOS + the first `--prompt-ratio` of a
real 256x256 photo's stream (0: the header only; 0.25: the paper's prefix completion), then
each side samples `--new-tokens` tokens with temperature 1 and top-k 50, EOS disabled so
that lengths match. Compilation is excluded (`Generator.compile`); PyTorch runs a short
generate() first. Each figure is one run: timings on this shared CPU vary by +-20%, compare
ratios within a run.

Syntax-safe sampling (`JpegGrammar`, a tokenizer trained on the built-in photos) runs on the
same model and prompts; it stops a row at EOS once the image is complete. Its host part per
step (the host draws, `jpeglm.sampling.host_draws`) is measured separately.

`--continuous` instead compares fixed batches with continuous batching
(`jpeglm.sampling.continuous`) at each batch size, on prompts whose rows end at different
lengths, as sampled images do: each prompt's length is a built-in photo's token count, scaled
to a mean of `--new-tokens`. A fixed batch runs to its longest row; continuous slots take the
next prompt as a row ends. Tokens/s counts the tokens asked for only. It also prints the
share of the memory bound (jpeglm.fit.decode_bound: weights + KV cache read per step, at the
chip's HBM bandwidth: `--chip h100`, or the device's own) and the paper's protocol's hours
at that speed. On this CPU it defaults to a small model and context:

  .venv/bin/python benchmarks/bench_sampling.py --continuous
  # on a GPU, the 1b shape at the paper's context, command buffers over the decode loop:
  python benchmarks/bench_sampling.py --continuous --d-model 2048 --layers 22 --head-dim 128 \
      --dtype bfloat16 --max-len 12288 --new-tokens 2550 --batches 8,32,128 \
      --xla-command-buffer loops

`--xla-command-buffer KINDS` sets XLA's `--xla_gpu_enable_command_buffer` (presets `loops`,
`off`, or a list: jpeglm.runtime.xla_flags) before jax starts; CPUs ignore it.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from jpeglm.runtime.xla_flags import use_command_buffer  # noqa: E402  (imports no jax)

if "--xla-command-buffer" in sys.argv:  # XLA reads its flags once, when jax starts
  use_command_buffer(sys.argv[sys.argv.index("--xla-command-buffer") + 1])
if "--threads" not in sys.argv or sys.argv[sys.argv.index("--threads") + 1] == "1":
  # One thread per side by default (before jax is imported): on a shared CPU, PyTorch's
  # OpenMP with 2 threads ran generate() 100x slower than with 1 (threads waiting on
  # descheduled peers), which says nothing about either implementation.
  os.environ["XLA_FLAGS"] = " ".join([os.environ.get("XLA_FLAGS", ""),
                                      "--xla_cpu_multi_thread_eigen=false"]).strip()

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs.jpeglm import get_config  # noqa: E402
from data_pipeline.media_files import builtin_photos  # noqa: E402
from jpeglm.codecs import JpegCodec, open_image  # noqa: E402
from jpeglm.codecs.jpeg_grammar import JpegGrammar  # noqa: E402
from jpeglm.export import hf_layout  # noqa: E402
from jpeglm.fit import chips, decode_bound  # noqa: E402
from jpeglm.model.transformer import ModelConfig, Transformer  # noqa: E402
from timed_grammar import host_timer  # noqa: E402  (benchmarks/, this script's folder)
from jpeglm.sampling.continuous import ContinuousBatcher  # noqa: E402
from jpeglm.sampling.generate import Generator, SamplingSettings  # noqa: E402
from jpeglm.tokenizer import ByteTokenizer  # noqa: E402

TOKENS_PER_IMAGE = decode_bound.TOKENS_PER_IMAGE
# --continuous on this CPU unless given: a small model and context that run in a minute or two.
CONTINUOUS_DEFAULTS = {"d_model": 128, "layers": 2, "max_len": 1024, "new_tokens": 256,
                       "batches": "8,32,128"}


def _timed(fn) -> tuple[float, object]:
  started = time.perf_counter()
  out = fn()
  return time.perf_counter() - started, out


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d-model", type=int, default=None, help="default 256 (--continuous: 128)")
  parser.add_argument("--layers", type=int, default=None, help="default 4 (--continuous: 2)")
  parser.add_argument("--max-len", type=int, default=None,
                      help="default 12,288 (--continuous: 1,024)")
  parser.add_argument("--new-tokens", type=int, default=None,
                      help="default 2,048 (--continuous: 256, the mean of the rows' lengths)")
  parser.add_argument("--batches", default=None, help="default 1,8,32 (--continuous: 8,32,128)")
  parser.add_argument("--continuous", action="store_true",
                      help="fixed batches vs continuous batching, rows of different lengths")
  parser.add_argument("--prompts-per-slot", type=int, default=3,
                      help="--continuous: prompts = this x the batch")
  parser.add_argument("--chip", default=None,
                      help="--continuous: HBM bandwidth of this chip for the bound (h100, h200, "
                           "v5p, ...); default: the device's own")
  parser.add_argument("--xla-command-buffer", default=None, metavar="KINDS",
                      help="XLA command buffers (GPU): loops, off, or kinds (read before jax "
                           "starts, above)")
  parser.add_argument("--safe-batches", default="1,8,32")
  parser.add_argument("--prompt-ratio", type=float, default=0.0)
  parser.add_argument("--threads", type=int, default=1,
                      help="PyTorch threads; 1 also makes XLA single-threaded")
  parser.add_argument("--skip-pytorch", action="store_true")
  parser.add_argument("--head-dim", type=int, default=64)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"),
                      help="weights and compute on both sides (bfloat16 on a GPU)")
  parser.add_argument("--torch-device", default="cpu", help="cuda on a GPU machine")
  args = parser.parse_args()
  defaults = (CONTINUOUS_DEFAULTS if args.continuous else
              {"d_model": 256, "layers": 4, "max_len": 12_288, "new_tokens": 2_048,
               "batches": "1,8,32"})
  for name, value in defaults.items():
    if getattr(args, name) is None:
      setattr(args, name, value)
  return args


def main() -> None:
  args = parse_args()
  heads = args.d_model // args.head_dim
  cfg = dataclasses.replace(ModelConfig.from_config(get_config("size=small").model),
                            d_model=args.d_model, n_layers=args.layers, n_heads=heads,
                            n_kv_heads=heads, d_ff=args.d_model * 11 // 4, max_len=args.max_len,
                            dtype=args.dtype, param_dtype=args.dtype)
  params = nnx.to_pure_dict(nnx.split(Transformer(cfg, nnx.Rngs(0)))[1])
  codec = JpegCodec(size=256)
  streams = [codec.encode(open_image(p)) for p in builtin_photos()]
  tokenizer = ByteTokenizer.train(streams, cfg.vocab_size,
                                  os.path.join(tempfile.mkdtemp(), "tokenizer.model"))
  prompt = [tokenizer.bos_id, *tokenizer.encode(codec.prefix(streams[0], args.prompt_ratio))]
  settings = SamplingSettings(1.0, 50, 1.0)
  # EOS id -1 never matches: free sampling generates exactly n tokens on both sides. No
  # banned ids on either side (generate()'s bad_words_ids alone would halve its speed).
  free = Generator(params, cfg, eos_id=-1, max_len=cfg.max_len, settings=settings)
  print(f"model: d {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"vocab {cfg.vocab_size}, max_len {cfg.max_len}; prompt {len(prompt)} tokens (BOS + "
        f"{args.prompt_ratio:.0%} of a 256x256 photo), {args.new_tokens} new tokens, {args.dtype}; jax "
        f"{jax.__version__} on {jax.devices()[0].device_kind}; XLA_FLAGS="
        f"{os.environ.get('XLA_FLAGS', '')!r}")
  if args.continuous:
    continuous_vs_fixed(args, params, cfg, streams, tokenizer, prompt)
    return
  free_seconds = {} if args.skip_pytorch else against_pytorch(args, params, cfg, prompt, free)
  safe_batches = [int(b) for b in args.safe_batches.split(",") if b]
  if safe_batches:
    safe_vs_free(args, params, cfg, codec, tokenizer, prompt, free, free_seconds, safe_batches)


def against_pytorch(args, params, cfg, prompt, free) -> dict[int, float]:
  """Free sampling against transformers' generate(); returns batch -> our seconds."""
  import torch
  import transformers

  n = args.new_tokens
  free_seconds = {}
  torch.set_num_threads(args.threads)
  hf_config = transformers.LlamaConfig(**hf_layout.llama_config(cfg, 1, 2, args.dtype))
  hf_model = transformers.LlamaForCausalLM(hf_config).eval()
  weights = hf_layout.hf_state_dict(jax.device_get(params), cfg)
  hf_model.load_state_dict({k: torch.from_numpy(np.asarray(v, np.float32)) for k, v in
                            weights.items()})
  hf_model = hf_model.to(device=args.torch_device, dtype=getattr(torch, args.dtype))
  print(f"vs torch {torch.__version__} on {args.torch_device} ({args.threads} threads), "
        "transformers "
        f"{transformers.__version__}, generate() with its default dynamic cache")
  print(f"{'batch':>5s} {'ours tok/s':>11s} {'ours s/image':>13s} {'compile s':>10s} "
        f"{'pytorch tok/s':>14s} {'speed-up':>9s}")
  for batch in [int(b) for b in args.batches.split(",") if b]:
    input_ids = torch.tensor([prompt] * batch, dtype=torch.long, device=args.torch_device)

    def theirs(tokens):
      with torch.inference_mode():
        out = hf_model.generate(
            input_ids, attention_mask=torch.ones_like(input_ids), do_sample=True,
            temperature=1.0, top_k=50, top_p=1.0, max_new_tokens=tokens,
            min_new_tokens=tokens, eos_token_id=None, pad_token_id=0, use_cache=True)
      assert out.shape[1] == len(prompt) + tokens
      if args.torch_device != "cpu":
        torch.cuda.synchronize()
    compile_s = free.compile(batch, len(prompt), n)
    ours, generations = _timed(lambda: free.generate([prompt] * batch, max_new_tokens=n))
    assert all(len(g.tokens) == n for g in generations)
    free_seconds[batch] = ours
    ours_rate = batch * n / ours
    print(f"{batch:5d} {ours_rate:11.1f} {TOKENS_PER_IMAGE / ours_rate:13.1f} "
          f"{compile_s:10.1f}", end="", flush=True)
    theirs(8)  # warm-up
    pytorch, _ = _timed(lambda: theirs(n))
    print(f" {batch * n / pytorch:14.1f} {pytorch / ours:8.2f}x", flush=True)
  print("speed-up = PyTorch time / our time (above 1: ours faster). s/image: seconds per "
        f"256x256 image ({TOKENS_PER_IMAGE} tokens) at that batch's throughput.")
  return free_seconds


def safe_vs_free(args, params, cfg, codec, tokenizer, prompt, free, free_seconds, batches):
  n = args.new_tokens
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  safe = Generator(params, cfg, eos_id=tokenizer.eos_id, max_len=cfg.max_len,
                   settings=free.settings, grammar=JpegGrammar(codec), pieces=pieces)
  timer = host_timer(safe)  # host draws (no top-p): each step's host part
  print(f"\nsyntax-safe vs free sampling, same model and prompt, up to {n} new tokens")
  print(f"{'batch':>5s} {'free tok/s':>11s} {'safe tok/s':>11s} {'safe/free':>10s} "
        f"{'host ms/step':>16s} {'complete':>9s}")
  for batch in batches:
    safe.compile(batch, len(prompt), n)
    if batch not in free_seconds:
      free.compile(batch, len(prompt), n)
      free_seconds[batch], _ = _timed(lambda: free.generate([prompt] * batch, max_new_tokens=n))
    timer.seconds = 0.0
    safe_s, generations = _timed(lambda: safe.generate([prompt] * batch, max_new_tokens=n))
    steps = max(len(g.tokens) for g in generations)
    tokens = sum(len(g.tokens) for g in generations)
    complete = sum(codec.decode(tokenizer.decode([*prompt[1:], *g.tokens])).complete
                   for g in generations)
    free_rate, safe_rate = batch * n / free_seconds[batch], tokens / safe_s
    print(f"{batch:5d} {free_rate:11.1f} {safe_rate:11.1f} {free_rate / safe_rate:9.2f}x "
          f"{timer.seconds / steps * 1e3:16.2f} {complete:5d}/{batch}", flush=True)
  print("safe/free = cost of a syntax-safe token over a free one (goal: at most 1.5x). "
        "complete: rows whose image finished (EOS) and decodes completely.")

def row_lengths(counts: np.ndarray, mean: int, count: int, room: int, seed: int = 0) -> list[int]:
  """`count` tokens-to-generate like sampled images': the built-in photos' token `counts`,
  scaled to a mean of `mean`, drawn in a seeded order; at most `room`."""
  drawn = np.random.default_rng(seed).choice(counts, count) * mean / counts.mean()
  return [int(min(room, max(1, round(x)))) for x in drawn]


def continuous_vs_fixed(args, params, cfg, streams, tokenizer, prompt) -> None:
  free = Generator(params, cfg, eos_id=-1, max_len=cfg.max_len,
                   settings=SamplingSettings(1.0, 50, 1.0))
  device = jax.devices()[0].device_kind
  bandwidth = chips.hbm_bandwidth(args.chip or device)
  protocol = decode_bound.Protocol()
  print(f"fixed batches vs continuous batching; rows of different lengths (mean {args.new_tokens}"
        f" tokens, the photos' spread); {args.prompts_per_slot} prompts per slot. Bound: "
        + (f"{bandwidth / 1e12:.2f} TB/s ({args.chip or device})" if bandwidth else
           "no HBM bandwidth known for this device (give --chip)"))
  print(f"{'batch':>5s} {'fixed tok/s':>12s} {'cont tok/s':>11s} {'speed-up':>9s} "
        f"{'fixed steps':>12s} {'cont steps':>11s} {'bound share':>12s} {'protocol h':>11s} "
        f"{'at bound h':>11s}")
  photo_tokens = np.array([len(tokenizer.encode(s)) for s in streams], float)
  for batch in [int(b) for b in args.batches.split(",") if b]:
    count = batch * args.prompts_per_slot
    lengths = row_lengths(photo_tokens, args.new_tokens, count, cfg.max_len - len(prompt))
    prompts = [prompt] * count
    # Fixed batches in order, each to its longest row; compiled beforehand, every cache size.
    groups = [lengths[i:i + batch] for i in range(0, count, batch)]
    for most in sorted({max(g) for g in groups}):
      free.compile(batch, len(prompt), most)
    began = time.perf_counter()
    for i, group in enumerate(groups):
      free.generate(prompts[:len(group)], seed=0, max_new_tokens=max(group),
                    indices=range(i * batch, i * batch + len(group)))
    fixed_s = time.perf_counter() - began
    batcher = ContinuousBatcher(free, batch)
    batcher.compile(len(prompt), max(lengths))
    cont_s, out = _timed(lambda: batcher.generate(prompts, seed=0, max_new_tokens=lengths))
    assert [len(g.tokens) for g in out] == lengths
    tokens = sum(lengths)
    fixed_rate, cont_rate = tokens / fixed_s, tokens / cont_s
    # A step's mean context: the prompt plus, weighted by tokens, half a row's length.
    context = len(prompt) + sum(l * l for l in lengths) / (2 * tokens)
    share = (f"{decode_bound.bandwidth_share(cfg, batch, context, cont_rate, bandwidth):11.1%}"
             if bandwidth else f"{'n/a':>11s}")
    at_bound = (f"{protocol.floor_hours(cfg, batch, bandwidth):11.1f}" if bandwidth
                else f"{'n/a':>11s}")
    print(f"{batch:5d} {fixed_rate:12.1f} {cont_rate:11.1f} {fixed_s / cont_s:8.2f}x "
          f"{sum(max(g) for g in groups):12d} {batcher.decode_steps:11d} {share} "
          f"{protocol.hours(cont_rate):11.1f} {at_bound}", flush=True)
  print(f"protocol h: the paper's protocol ({protocol.num_images:,} images x "
        f"{len(protocol.ratios)} ratios x {protocol.seeds} seeds, "
        f"{protocol.generated_tokens() / 1e6:.1f}M tokens generated) at the continuous rate "
        "of this model and context; at bound h: at the memory floor for this model with the "
        f"protocol's mean context ({protocol.mean_context():,.0f} slots). bound share: the "
        "floor of a step at this run's mean context over the measured step.")


if __name__ == "__main__":
  main()
