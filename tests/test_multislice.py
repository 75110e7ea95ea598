"""Multislice (`mesh.dcn_data`): training across 2 "slices" (device groups on this machine)
matches one slice, and a run preempted on 2 slices resumes on 1 (checkpoints re-shard)."""

import re
import subprocess

import numpy as np
import pytest

from tests.train_helpers import (env_with_devices, losses, run_train, tiny_overrides,
                                 train_command)


# Slow: three training runs. `make test` covers the hybrid mesh's loss and gradients in
# tests/test_sharding.py and restores onto another mesh in tests/test_train.py.
@pytest.mark.slow
def test_two_slices_train_like_one_and_resume_on_one(tokenizer_path, tmp_path):
  overrides = tiny_overrides(tokenizer_path, steps=6, **{"train.checkpoint_every": 2})
  one = str(tmp_path / "one")
  run_train(one, overrides)
  sliced = str(tmp_path / "sliced")
  two_slices = overrides + ["--config.mesh.dcn_data=2", "--config.mesh.tensor=2"]
  # Preempted (SIGTERM) after step 2 on 2 slices: it saves and stops a step or two later.
  env = {**env_with_devices(8), "JPEGLM_FAULT": "sigterm@2"}
  first = subprocess.run(train_command(sliced, two_slices), env=env, capture_output=True,
                         text=True, timeout=600)
  assert first.returncode == 0, first.stderr[-3000:]
  assert "'data': 2" in first.stdout and "preempted" in first.stdout, first.stdout
  # Rerun on one slice (another mesh): the checkpoint re-shards and the run goes on.
  second = run_train(sliced, overrides)
  resumed = int(re.search(r"resuming from step (\d+)", second.stdout).group(1))
  assert 2 <= resumed < 6, second.stdout
  want, got = losses(one), losses(sliced)
  assert sorted(got) == [1, 2, 3, 4, 5, 6]
  for step in want:
    np.testing.assert_allclose(got[step], want[step], rtol=2e-5)
