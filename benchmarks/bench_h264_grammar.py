"""Host cost of H.264 syntax-safe sampling: `AvcGrammar` microseconds per byte and per token.

  .venv/bin/python benchmarks/bench_h264_grammar.py [--vocab 1024] [--walk-tokens 2000]

At the paper's settings (256x144, QP 37, one macroblock per slice) with a BPE of the paper's
vocabulary (1,024) trained on the built-in clips:
  - advance, byte by byte, over each real clip (cold: a fresh grammar; warm: again);
  - per token over the clips' own tokens, as a sampler calls it: allowed(state) then
    advance(state, token), cold and warm;
  - per token on a random walk (each token drawn uniformly from the mask), the worst case:
    an untrained model reaches positions no real stream has, so little is memoised.
Compare the per-token figures with `benchmarks/bench_sampling.py`'s free sampling cost per
token per row. Each figure is one run: timings on a shared CPU vary by +-20%.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from data_pipeline.media_files import builtin_videos  # noqa: E402
from jpeglm.codecs import AvcCodec  # noqa: E402
from jpeglm.codecs.h264_grammar import AvcGrammar  # noqa: E402
from jpeglm.tokenizer import ByteTokenizer  # noqa: E402


def per_byte(grammar, data: bytes) -> float:
  started = time.perf_counter()
  state = grammar.start()
  for i in range(len(data)):
    state = grammar.advance(state, data[i:i + 1])
  assert grammar.is_complete(state)
  return (time.perf_counter() - started) / len(data) * 1e6


def per_token(grammar, pieces, ids) -> tuple[float, float]:
  allowed = advance = 0.0
  state = grammar.start()
  for token in ids:
    t0 = time.perf_counter()
    mask = grammar.allowed(state, pieces)
    t1 = time.perf_counter()
    state = grammar.advance(state, pieces[token])
    advance += time.perf_counter() - t1
    allowed += t1 - t0
    assert mask[token]
  assert grammar.is_complete(state)
  return allowed / len(ids) * 1e6, advance / len(ids) * 1e6


def random_walk(grammar, pieces, tokens: int, seed: int) -> tuple[float, float]:
  rng = np.random.default_rng(seed)
  allowed = advance = 0.0
  state = grammar.start()
  for _ in range(tokens):
    if grammar.is_complete(state):
      state = grammar.start()
    t0 = time.perf_counter()
    mask = grammar.allowed(state, pieces)
    t1 = time.perf_counter()
    state = grammar.advance(state, pieces[int(rng.choice(np.flatnonzero(mask)))])
    advance += time.perf_counter() - t1
    allowed += t1 - t0
  return allowed / tokens * 1e6, advance / tokens * 1e6


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--vocab", type=int, default=1024)
  parser.add_argument("--walk-tokens", type=int, default=2000)
  args = parser.parse_args()
  codec = AvcCodec()
  clips = [codec.encode(p) for p in builtin_videos()]
  clips = [c for c in clips if len(codec.describe(c)["frames"]) == codec.num_frames]
  with tempfile.TemporaryDirectory() as tmp:
    tokenizer = ByteTokenizer.train(clips, args.vocab, os.path.join(tmp, "avc.model"))
  pieces = [tokenizer.piece_bytes(i) for i in range(tokenizer.vocab_size)]
  print(f"{codec}, vocabulary {tokenizer.vocab_size}, {len(clips)} clips of "
        f"{codec.num_frames} frames x {codec.mbs_per_frame} macroblocks")

  grammar = AvcGrammar(codec)
  for i, data in enumerate(clips):
    cold = per_byte(grammar, data)
    warm = per_byte(grammar, data)
    print(f"clip {i}: {len(data):6d} bytes  advance per byte: cold {cold:6.1f} us, "
          f"warm {warm:5.1f} us")

  grammar = AvcGrammar(codec)
  for i, data in enumerate(clips):
    ids = tokenizer.encode(data)
    cold = per_token(grammar, pieces, ids)
    warm = per_token(grammar, pieces, ids)
    print(f"clip {i}: {len(ids):6d} tokens ({len(data) / len(ids):.2f} bytes each)  per token: "
          f"allowed cold {cold[0]:7.1f} us, warm {warm[0]:6.1f} us; "
          f"advance cold {cold[1]:6.1f} us, warm {warm[1]:5.1f} us")

  walk = random_walk(AvcGrammar(codec), pieces, args.walk_tokens, seed=0)
  print(f"random walk, {args.walk_tokens} tokens: per token allowed {walk[0]:7.1f} us, "
        f"advance {walk[1]:6.1f} us")


if __name__ == "__main__":
  main()
