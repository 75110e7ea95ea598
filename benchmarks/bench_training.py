"""End-to-end training throughput on this machine: steps/s, tokens/s, the share of time spent
waiting for data, and how long checkpoint saves block training, for the tiny and small configs
(real data: built-in photos encoded on the fly).

  .venv/bin/python benchmarks/bench_training.py [--steps 30] [--sizes tiny,small]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from jpeglm.config_io import load_config  # noqa: E402
from jpeglm.training.metrics_log import read_metrics  # noqa: E402
from jpeglm.train import train_and_evaluate  # noqa: E402

CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "configs", "jpeglm.py")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--steps", type=int, default=30)
  parser.add_argument("--sizes", default="tiny,small")
  args = parser.parse_args()
  print(f"{'config':7s} {'batch x len':>12s} {'steps/s':>8s} {'tokens/s':>9s} {'data wait':>10s} "
        f"{'ckpt block s':>13s}")
  for size in args.sizes.split(","):
    with tempfile.TemporaryDirectory() as workdir:
      # Logs every 5 steps; the first window (compilation) is left out of the rates.
      config = load_config(f"{CONFIG}:size={size}", [
          f"--config.train.steps={args.steps}", "--config.train.log_every=5",
          f"--config.train.checkpoint_every={args.steps // 2}", "--config.train.eval_every=0",
          "--config.tokenizer.num_files=60"])
      train_and_evaluate(config, workdir)
      rows = read_metrics(workdir)
      windows = [r for r in rows if "steps_per_second" in r][1:]
      blocks = [r["checkpoint_blocking_seconds"] for r in rows if "checkpoint_blocking_seconds" in r]
      print(f"{size:7s} {config.train.global_batch:>5d} x {config.data.seq_len:<5d} "
            f"{statistics.mean(r['steps_per_second'] for r in windows):8.3f} "
            f"{statistics.mean(r['tokens_per_second'] for r in windows):9.0f} "
            f"{100 * statistics.mean(r['data_wait_fraction'] for r in windows):9.1f}% "
            f"{max(blocks):13.2f}")
  print("ckpt block s: the longest time a save held the training loop (device -> host copy); "
        "Orbax writes the files in a background thread while the next steps run.")


if __name__ == "__main__":
  main()
