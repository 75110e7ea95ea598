"""Goodput records: categories add up to the wall time, a killed attempt's record survives,
the next attempt counts the steps it redoes, and the workdir sums the attempts.
(tests/test_train.py checks the same on a real kill -9 and resume.)"""

import json
import time

from jpeglm.training import goodput


def _attempt(workdir, start_step, steps, end_step=10, checkpoint_at=(), finish=True):
  g = goodput.Goodput(str(workdir), time.perf_counter(), start_step, end_step)
  time.sleep(0.02)  # setup
  for step in steps:
    with g.timed("data_wait"):
      time.sleep(0.002)
    time.sleep(0.003)  # dispatch
    g.dispatched(step)
    if step in checkpoint_at:
      with g.timed("checkpoint_blocking"):
        time.sleep(0.002)
  return g.finish() if finish else None


def test_a_killed_attempt_is_counted_and_its_unsaved_steps_are_redone(tmp_path):
  _attempt(tmp_path, 0, range(1, 6), checkpoint_at=(3,), finish=False)  # killed after step 5
  [killed] = goodput.read_attempts(str(tmp_path))
  assert (killed["attempt"], killed["last_step"], killed["finished"]) == (1, 5, False)

  summary = _attempt(tmp_path, 3, range(4, 11), checkpoint_at=(6, 9))
  first, second = goodput.read_attempts(str(tmp_path))
  assert first == killed and second["finished"] and second["lost_steps"] == 2  # steps 4, 5
  for attempt in (first, second):
    seconds = attempt["seconds"]
    assert set(seconds) == set(goodput.CATEGORIES) and min(seconds.values()) >= 0
    assert sum(seconds.values()) <= attempt["wall_seconds"]
  spent = second["seconds"]
  assert spent["startup_and_compile"] >= 0.02 and spent["data_wait"] >= 7 * 0.002
  assert spent["lost_to_restarts"] > 0 and spent["training_steps"] > spent["lost_to_restarts"]
  assert spent["checkpoint_blocking"] >= 2 * 0.002 and spent["evaluation"] == 0
  assert summary["attempts"] == 2 and summary["total_lost_steps"] == 2
  assert summary["total_wall_seconds"] == first["wall_seconds"] + second["wall_seconds"]
  assert 0 < summary["fraction"] < 1
  text = goodput.line(summary)
  assert text.startswith("goodput ") and "(2 steps redone)" in text
  assert "total over 2 attempt(s)" in text and "\n" not in text


def test_a_finished_run_redoes_nothing_and_a_damaged_record_starts_afresh(tmp_path):
  _attempt(tmp_path, 0, range(1, 5), end_step=4)
  again = _attempt(tmp_path, 4, [], end_step=4)  # rerun of a finished run: nothing to redo
  assert again["lost_steps"] == 0 and again["attempts"] == 2
  (tmp_path / goodput.FILE).write_text("{not json")
  fresh = _attempt(tmp_path, 0, range(1, 3), end_step=4)
  assert fresh["attempts"] == 1
  assert json.loads((tmp_path / goodput.FILE).read_text())["attempts"][0]["last_step"] == 2
