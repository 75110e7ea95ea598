"""`jpeglm info`: parameter count and per-device memory, computed without allocating."""

import time


from jpeglm.cli import main

LLAMA2_7B_VOCAB_320 = 2 * 320 * 4096 + 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008 + 2 * 4096) + 4096


def run(capsys, *argv):
  code = main(list(argv))
  out, err = capsys.readouterr()
  return code, out, err


def test_info_7b_prints_the_llama2_count_instantly(capsys):
  start = time.perf_counter()
  code, out, _ = run(capsys, "info", "--config", "configs/jpeglm.py:size=7b", "--devices", "64")
  assert time.perf_counter() - start < 20  # abstract: nothing the size of 7B is allocated
  assert code == 0
  assert f"parameters: {LLAMA2_7B_VOCAB_320:,} total" in out
  assert "embedding: 1,310,720" in out
  assert "data=1 x fsdp=64 x context=1 x tensor=1 (64 devices)" in out
  # float32 matrices split 64 ways over fsdp (all divide); the 65 norm scales are replicated.
  norms = (2 * 32 + 1) * 4096
  per_device = (LLAMA2_7B_VOCAB_320 - norms) * 4 // 64 + norms * 4
  assert f"params {per_device / 1024 ** 3:,.2f} GiB [{per_device:,} B] (float32)" in out
  assert f"AdamW moments {2 * per_device / 1024 ** 3:,.2f} GiB [{2 * per_device:,} B]" in out


def test_info_tensor_axis_and_overrides(capsys):
  code, out, _ = run(capsys, "info", "--config", "configs/jpeglm.py:size=7b,codec=avc",
                     "--devices", "16", "--config.mesh.tensor=4", "--config.model.param_dtype=bfloat16")
  assert code == 0
  assert "data=1 x fsdp=4 x context=1 x tensor=4 (16 devices)" in out
  assert f"{LLAMA2_7B_VOCAB_320 + 2 * (1024 - 320) * 4096:,} total" in out
  # Every 7b matrix has one dimension over fsdp and one over tensor: 1/16 each, 2 bytes.
  norms = (2 * 32 + 1) * 4096
  per_device = (LLAMA2_7B_VOCAB_320 + 2 * 704 * 4096 - norms) * 2 // 16 + norms * 2
  assert f"[{per_device:,} B] (bfloat16)" in out


def test_info_uses_local_devices_by_default(capsys):
  code, out, _ = run(capsys, "info", "--config", "configs/jpeglm.py:size=tiny")
  assert code == 0 and "(8 devices)" in out  # conftest's 8 fake CPU devices


def test_info_mesh_that_does_not_divide_is_one_line_error(capsys):
  code, _, err = run(capsys, "info", "--config", "configs/jpeglm.py:size=7b", "--devices", "6",
                     "--config.mesh.tensor=4")
  assert code == 2
  assert err.startswith("jpeglm: error: mesh") and "do not divide the 6 devices" in err
  assert len(err.strip().splitlines()) == 1
