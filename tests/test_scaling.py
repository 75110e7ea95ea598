"""launch/scaling.py on fake CPU devices: CSV, plot, and equal strong-scaling losses."""

import csv
import os
import subprocess
import sys

import pytest

from tests.train_helpers import CONFIG, REPO, train_tiny_tokenizer


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


def test_scaling_harness_weak_and_strong(tokenizer_path, tmp_path):
  out = tmp_path / "scaling"
  overrides = [f"--config.tokenizer.path={tokenizer_path}", "--config.data.seq_len=128",
               "--config.model.max_len=128", "--config.data.num_workers=0",
               "--config.train.warmup_steps=1", "--config.train.lr=3e-3"]
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "scaling.py"), "--config", CONFIG,
       "--devices", "1,2", "--steps", "3", "--global-batch", "4", "--per-device-batch", "2",
       "--mode", "both", "--out", str(out), "--", *overrides],
      capture_output=True, text=True, timeout=600, cwd=REPO,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
  assert "losses agree" in result.stdout and "OK" in result.stdout
  with open(out / "scaling.csv") as f:
    rows = list(csv.DictReader(f))
  key = {(r["mode"], int(r["devices"])): r for r in rows}
  assert sorted(key) == [("strong", 1), ("strong", 2), ("weak", 1), ("weak", 2)]
  assert [int(key[("strong", n)]["global_batch"]) for n in (1, 2)] == [4, 4]
  assert [int(key[("weak", n)]["global_batch"]) for n in (1, 2)] == [2, 4]
  for r in rows:
    assert int(r["steps"]) == 3
    assert float(r["step_time_s"]) > 0 and float(r["tokens_per_s_per_device"]) > 0
    tokens_per_device = float(r["tokens_per_s"]) / int(r["devices"])
    assert float(r["tokens_per_s_per_device"]) == pytest.approx(tokens_per_device)
  assert float(key[("strong", 1)]["efficiency"]) == 1.0
  # Strong scaling: the same batches on 1 and 2 devices give the same losses.
  strong = [float(key[("strong", n)]["final_loss"]) for n in (1, 2)]
  assert strong[1] == pytest.approx(strong[0], rel=1e-5)
  assert float(key[("strong", 2)]["max_loss_rel_diff"]) <= 1e-5
  # Weak scaling on 1 device trains on half the batch: a different loss (the check is real).
  assert float(key[("weak", 1)]["final_loss"]) != pytest.approx(strong[0], rel=1e-5)
  png = (out / "scaling.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 5000
