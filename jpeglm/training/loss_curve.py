"""A run's loss curve as a PNG: train and held-out bits per byte from metrics.jsonl."""

from __future__ import annotations


def plot_losses(workdir: str, path: str, title: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from jpeglm.training.metrics_log import read_metrics

  rows = read_metrics(workdir)
  train = {r["step"]: r["bits_per_byte"] for r in rows if "bits_per_byte" in r}
  held_out = {r["step"]: r["eval_bits_per_byte"] for r in rows if "eval_bits_per_byte" in r}
  fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
  ax.plot(sorted(train), [train[s] for s in sorted(train)], label="train")
  ax.plot(sorted(held_out), [held_out[s] for s in sorted(held_out)], "o-", label="held out")
  ax.set_xlabel("step")
  ax.set_ylabel("bits per JPEG byte")
  ax.set_title(title)
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
