"""KV-cache decoding speed on this CPU: ours (JAX) vs the same weights in transformers'
PyTorch LlamaForCausalLM with `generate()`. Target: faster than the PyTorch peer.

  .venv/bin/python benchmarks/bench_sampling.py [--new-tokens 256] [--config-size small]

The `small` config's shape (d 512, 8 layers, 8 heads, vocabulary 320) with random weights:
speed does not depend on the values. Both sides sample with temperature 1 and top-k 50 and
generate exactly `--new-tokens` tokens after a BOS prompt (EOS is disabled on both sides so
the lengths match). Seconds per 256x256 image = ~5,100 tokens (the paper's ~5K) / tokens/s.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from configs.jpeglm import get_config  # noqa: E402
from jpeglm.export import hf_layout  # noqa: E402
from jpeglm.model import ModelConfig, Transformer  # noqa: E402
from jpeglm.sampling.generate import Generator, SamplingSettings  # noqa: E402

TOKENS_PER_IMAGE = 5_100  # mean of 256x256 q25 streams of the built-in photos, BOS/EOS included


def _paired_median_times(ours, theirs, repeats: int) -> tuple[float, float]:
  """Median seconds of each, measured alternately so that outside load hits both alike."""
  ours(), theirs()  # compile / warm up
  times = ([], [])
  for _ in range(repeats):
    for fn, out in ((ours, times[0]), (theirs, times[1])):
      start = time.perf_counter()
      fn()
      out.append(time.perf_counter() - start)
  return statistics.median(times[0]), statistics.median(times[1])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config-size", default="small")
  parser.add_argument("--new-tokens", type=int, default=256)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
  args = parser.parse_args()

  import torch
  import transformers

  torch.set_num_threads(args.threads)
  cfg = dataclasses.replace(ModelConfig.from_config(get_config(f"size={args.config_size}").model),
                            max_len=args.new_tokens + 8, dtype="float32")
  params = nnx.to_pure_dict(nnx.split(Transformer(cfg, nnx.Rngs(0)))[1])
  # EOS id -1 never matches: both sides generate exactly --new-tokens tokens.
  generator = Generator(params, cfg, eos_id=-1, max_len=cfg.max_len,
                        settings=SamplingSettings(1.0, 50, 1.0))
  hf_config = transformers.LlamaConfig(**hf_layout.llama_config(cfg, 1, 2, "float32"))
  hf_model = transformers.LlamaForCausalLM(hf_config).eval()
  hf_model.load_state_dict({k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in
                            hf_layout.hf_state_dict(jax.device_get(params), cfg).items()})
  print(f"{args.config_size} config: d {cfg.d_model}, {cfg.n_layers} layers, {cfg.n_heads} heads, "
        f"vocab {cfg.vocab_size}; {args.new_tokens} new tokens after BOS; "
        f"jax {jax.__version__}, torch {torch.__version__} ({args.threads} threads), "
        f"transformers {transformers.__version__}")
  print(f"{'batch':>5s} {'ours tok/s':>11s} {'pytorch tok/s':>14s} {'ratio':>6s} "
        f"{'ours s/image':>13s} {'pytorch s/image':>16s}")
  for batch in (1, 8):
    prompts = [[1]] * batch
    input_ids = torch.ones((batch, 1), dtype=torch.long)

    def theirs():
      with torch.inference_mode():
        hf_model.generate(input_ids, do_sample=True, temperature=1.0, top_k=50, top_p=1.0,
                          max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                          eos_token_id=None, pad_token_id=0, use_cache=True)

    ours, pytorch = _paired_median_times(
        lambda: generator.generate(prompts, seed=0, max_new_tokens=args.new_tokens), theirs,
        args.repeats)
    ours_rate, their_rate = batch * args.new_tokens / ours, batch * args.new_tokens / pytorch
    print(f"{batch:5d} {ours_rate:11.1f} {their_rate:14.1f} {ours / pytorch:6.2f} "
          f"{TOKENS_PER_IMAGE / ours_rate:13.1f} {TOKENS_PER_IMAGE / their_rate:16.1f}")
  print("ratio = our time / PyTorch time (below 1: ours faster). s/image: seconds per 256x256 "
        f"image ({TOKENS_PER_IMAGE} tokens) at that batch's total throughput, extrapolated from "
        f"{args.new_tokens}-token runs (attention grows with the context, so real images cost more).")


if __name__ == "__main__":
  main()
