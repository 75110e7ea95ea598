"""A checkpoint write that fails on one process of a two-process run (its disk is full) stops
both processes at the same step with the same one-line error naming the step and path; the
previous checkpoint stays the latest and a rerun resumes from it. No process may hang."""

import os
import re
import subprocess

import pytest

from tests.train_helpers import (env_with_devices, free_port, losses, tiny_overrides,
                                 train_command)

HANG_SECONDS = 400  # a deadlock fails here instead of stalling the suite


def _two_processes(workdir, overrides, env=None) -> list[subprocess.CompletedProcess]:
  port = free_port()
  argvs = [train_command(str(workdir), overrides, "--coordinator", f"127.0.0.1:{port}",
                         "--num-processes", "2", "--process-id", str(i)) for i in range(2)]
  procs = [subprocess.Popen(argv, env={**env_with_devices(4), **(env or {})},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for argv in argvs]
  results = []
  try:
    for argv, p in zip(argvs, procs):
      out, err = p.communicate(timeout=HANG_SECONDS)
      results.append(subprocess.CompletedProcess(argv, p.returncode, out, err))
  except subprocess.TimeoutExpired:
    for p in procs:
      p.kill()
    tails = [p.communicate()[1][-1500:] for p in procs]
    pytest.fail(f"a process did not exit within {HANG_SECONDS} s:\n" + "\n---\n".join(tails))
  return results


def _error_line(stderr: str) -> str:
  lines = [line for line in stderr.splitlines() if line.startswith("jpeglm: error:")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


@pytest.mark.slow
def test_write_failing_on_one_process_stops_every_process(tokenizer_path, tmp_path):
  overrides = tiny_overrides(tokenizer_path, steps=10)  # checkpoints at 3, 6, 9, 10
  workdir = tmp_path / "run"
  # From step 4 on, files of process 1 alone cannot grow past 64 KiB (its disk is full):
  # checkpoint 3 is written, process 1's part of checkpoint 6 is not.
  failed = _two_processes(workdir, overrides, {"JPEGLM_FAULT": "diskfull@4:1"})
  assert [r.returncode for r in failed] == [2, 2], [r.stderr[-2000:] for r in failed]
  lines = [_error_line(r.stderr) for r in failed]
  assert lines[0] == lines[1]  # process 0 names the cause found on process 1
  match = re.fullmatch(
      r"jpeglm: error: could not write checkpoint step 6 to \S+/checkpoints/6 on process 1: "
      r".*File too large.*; every process stopped at step (\d+); checkpoint 3 is the latest: "
      r"rerun the same command to resume from it", lines[0])
  assert match, lines[0]
  assert 6 < int(match[1]) <= 10
  checkpoints = workdir / "checkpoints"
  assert [n for n in os.listdir(checkpoints) if n.isdigit()] == ["3"]
  assert max(losses(str(workdir))) < int(match[1])  # steps carrying the stop are not logged

  rerun = _two_processes(workdir, overrides)
  assert [r.returncode for r in rerun] == [0, 0], [r.stderr[-2000:] for r in rerun]
  assert "resuming from step 3" in rerun[0].stdout  # the half-written step 6 is not picked
  assert "10" in os.listdir(checkpoints) and max(losses(str(workdir))) == 10
