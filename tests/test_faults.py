"""The test-only fault hook: specs parse, a typo fails loudly, faults fire only where asked."""

import signal

import numpy as np
import pytest

from jpeglm.training import faults


def test_specs_parse_and_typos_fail_loudly():
  assert faults.parse("sigkill@4, sigterm@5:1,nan@2") == [
      ("sigkill", 4, None), ("sigterm", 5, 1), ("nan", 2, None)]
  for bad in ("sigkil@4", "sigterm@x", "sigterm5"):
    with pytest.raises(ValueError, match="JPEGLM_FAULT"):
      faults.parse(bad)


def test_faults_fire_only_at_their_step_and_process(monkeypatch):
  sent = []
  monkeypatch.setattr(faults.os, "kill", lambda pid, sig: sent.append(sig))
  hook = faults.Faults(process_index=0, text="sigterm@3:1,sigint@2,nan@5")
  for step in range(1, 6):
    hook.at_step(step)
  assert sent == [signal.SIGINT]  # sigterm@3 was for process 1
  rows = {"weights": np.ones((2, 4), np.float32)}
  assert np.isnan(hook.batch(5, rows)["weights"]).all()
  assert hook.batch(4, rows)["weights"].sum() == 8
