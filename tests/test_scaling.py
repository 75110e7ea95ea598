"""launch/scaling.py on fake CPU devices: CSV, plot, and equal strong-scaling losses."""

import csv
import math
import os
import re
import subprocess
import sys

import pytest

from tests.train_helpers import CONFIG, REPO


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


@pytest.mark.slow
def test_predicted_scaling_from_tpu_compiles(tmp_path):
  """--predict: the best compiled layout per slice size, weak and strong, as CSV and PNG."""
  pytest.importorskip("libtpu", reason="needs libtpu: pip install 'jpeglm[tpu]'")
  out = tmp_path / "predict"
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, "launch", "scaling.py"), "--predict",
       "--config", CONFIG, "--topology", "v5p", "--chips", "4,8", "--global-batch", "8",
       "--per-chip-batch", "2", "--max-compiles", "2", "--top", "1",
       "--cache", str(tmp_path / "plan.json"), "--out", str(out)],
      capture_output=True, text=True, timeout=1200, cwd=REPO,
      env={k: v for k, v in os.environ.items() if k != "XLA_FLAGS"})
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  with open(out / "predicted_scaling.csv") as f:
    rows = list(csv.DictReader(f))
  key = {(r["mode"], int(r["chips"])): r for r in rows}
  assert sorted(key) == [("strong", 4), ("strong", 8), ("weak", 4), ("weak", 8)]
  assert [key[("strong", n)]["topology"] for n in (4, 8)] == ["v5p-8", "v5p-16"]
  assert [int(key[("weak", n)]["global_batch"]) for n in (4, 8)] == [8, 16]
  for (mode, chips), r in key.items():
    # the layout uses the whole slice
    assert math.prod(int(n) for n in re.findall(r"\d+", r["layout"])) == chips
    assert 0 < float(r["peak_gib"]) < 95
    # tokens/s per chip is the global batch's tokens over the estimated step, per chip
    tokens = int(r["global_batch"]) * 1024
    assert float(r["tokens_per_s_per_chip"]) == pytest.approx(
        tokens / float(r["step_seconds"]) / chips, rel=1e-6)
    assert 0 < float(r["mfu_ceiling"]) <= 1.0
    assert float(r["step_seconds_no_overlap"]) >= float(r["step_seconds"])
    assert f"--config.train.grad_accum={r['grad_accum']}" in r["flags"]
  assert float(key[("strong", 4)]["efficiency"]) == 1.0
  assert float(key[("weak", 4)]["efficiency"]) == 1.0
  png = (out / "predicted_scaling.png").read_bytes()
  assert png.startswith(b"\x89PNG") and len(png) > 5000
