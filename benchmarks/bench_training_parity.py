"""Training parity with PyTorch: prints jpeglm's and transformers' LlamaForCausalLM's loss
per step, from the same weights on the same real token batches (jpeglm.export.training_parity).

  python benchmarks/bench_training_parity.py --steps 100
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from jpeglm.export import training_parity  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=100)
  parser.add_argument("--seq-len", type=int, default=64)
  parser.add_argument("--batch", type=int, default=8)
  args = parser.parse_args()
  started = time.perf_counter()
  ours, theirs = training_parity.run(args.steps, args.seq_len, args.batch)
  relative = np.abs(np.subtract(ours, theirs)) / np.abs(theirs)
  print(f"{'step':>5} {'jpeglm':>12} {'pytorch':>12} {'relative':>10}")
  for i, (a, b, r) in enumerate(zip(ours, theirs, relative)):
    print(f"{i + 1:>5} {a:>12.7f} {b:>12.7f} {r:>10.2e}")
  print(f"max relative difference {relative.max():.2e} at step {relative.argmax() + 1}; "
        f"loss {ours[0]:.4f} -> {ours[-1]:.4f}; {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
  main()
