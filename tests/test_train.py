"""`jpeglm train`: learning, exact resume after kill -9, multi-process equality, mesh
changes on restore, damaged checkpoints, preemption, and clear errors before compute."""

import json
import os
import re
import shutil
import signal
import subprocess

import jax
import numpy as np
import pytest

from data_pipeline import batch_spec
from jpeglm.training import goodput
from jpeglm.model import sharding
from jpeglm.training import step as train_step
from jpeglm.cli import main
from jpeglm.config_io import load_config
from jpeglm.errors import ConfigError, JpeglmError
from jpeglm.train import train_and_evaluate
from jpeglm.training.state import init_state
from tests.train_helpers import (CONFIG, env_with_devices, free_port, losses, run_train,
                                 tiny_overrides, train_command)


def tiny_config(tokenizer_path, **extra):
  return load_config(CONFIG, tiny_overrides(tokenizer_path, **extra))


def _fixed_batch(config, seed=0):
  rng = np.random.default_rng(seed)
  shape = (config.train.global_batch, config.data.seq_len)
  tokens = rng.integers(3, config.model.vocab_size, (shape[0], shape[1] + 1)).astype(np.int32)
  return batch_spec.conform({
      "inputs": tokens[:, :-1], "targets": tokens[:, 1:], "segment_ids": np.ones(shape),
      "positions": np.broadcast_to(np.arange(shape[1]), shape), "weights": np.ones(shape),
      "target_tokens": np.full(shape[0], shape[1]), "target_bytes": np.full(shape[0], shape[1])})


def _step_fn(config, mesh, grad_accum=1):
  """A fresh state and the trainer's own jitted step (train_step.build)."""
  config = config.copy_and_resolve_references()
  config.train.grad_accum = grad_accum
  built = train_step.build(config, mesh)
  state, _ = init_state(config, mesh, built.optimizer)
  stop = {"stop": np.zeros(config.train.global_batch, np.int32)}
  return state, lambda state, batch: built.step(state, sharding.shard_batch({**batch, **stop},
                                                                            mesh))


def test_tiny_model_learns_a_repeated_batch(tokenizer_path):
  config = tiny_config(tokenizer_path, **{"train.steps": 60, "train.lr": 1e-2})
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  state, step = _step_fn(config, mesh)
  batch = _fixed_batch(config)
  seen = []
  with jax.set_mesh(mesh):
    for _ in range(60):
      state, metrics = step(state, batch)
      seen.append(float(metrics["loss"]))
  assert seen[-1] < 0.5 * seen[0], seen[::10]


def test_gradient_accumulation_equals_one_big_batch(tokenizer_path):
  config = tiny_config(tokenizer_path)
  mesh = sharding.make_mesh({"data": 1, "fsdp": 1, "tensor": 1}, jax.devices()[:1])
  batch = _fixed_batch(config, seed=1)
  one, step1 = _step_fn(config, mesh, 1)
  four, step4 = _step_fn(config, mesh, 4)
  with jax.set_mesh(mesh):
    one, m1 = step1(one, batch)
    four, m4 = step4(four, batch)
  np.testing.assert_allclose(float(m1["loss"]), float(m4["loss"]), rtol=1e-6)
  for a, b in zip(jax.tree.leaves(one["params"]), jax.tree.leaves(four["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-7)


# The failure tests below stop a run partway and resume it; this uninterrupted run is the
# reference their losses must equal, exactly (float32 on CPU).
STEPS = 10


@pytest.fixture(scope="module")
def straight(tokenizer_path, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("straight") / "run")
  run_train(workdir, tiny_overrides(tokenizer_path, steps=STEPS))
  return losses(workdir)


def _run_with_fault(workdir, overrides, fault):
  return subprocess.run(train_command(workdir, overrides),
                        env={**env_with_devices(8), "JPEGLM_FAULT": fault},
                        capture_output=True, text=True, timeout=600)


def _error_line(stderr: str) -> str:
  lines = [line for line in stderr.splitlines() if line.startswith("jpeglm: error:")]
  assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
  return lines[0]


def test_resume_after_kill_matches_uninterrupted(tokenizer_path, tmp_path, straight):
  overrides = tiny_overrides(tokenizer_path, steps=STEPS)
  killed = str(tmp_path / "killed")
  # The run kills itself (a real SIGKILL) right after dispatching step 4: no race with a poller.
  result = _run_with_fault(killed, overrides, "sigkill@4")
  assert result.returncode == -signal.SIGKILL, result.stderr[-3000:]
  assert sorted(losses(killed)) == [1, 2, 3]  # step 3 is read once step 4 is queued
  rerun = run_train(killed, overrides)
  assert losses(killed) == straight
  # Goodput: the killed attempt left its record (last dispatched step 4); the resumed one
  # redid the steps past the checkpoint it resumed from and counts them lost, and the
  # workdir sums both attempts. Checkpoint 3 is written in the background: the kill may
  # land before it is complete, and the rerun then starts over.
  resumed = int(re.search(r"(?:resuming|starting) from step (\d+)", rerun.stdout)[1])
  assert resumed in (0, 3), rerun.stdout[-2000:]
  lost = 4 - resumed
  first, second = goodput.read_attempts(killed)
  assert (first["last_step"], first["finished"]) == (4, False)
  assert (second["start_step"], second["last_step"], second["lost_steps"]) == (
      resumed, STEPS, lost)
  for attempt in (first, second):
    assert all(v >= 0 for v in attempt["seconds"].values())
    assert sum(attempt["seconds"].values()) <= attempt["wall_seconds"]
  assert second["seconds"]["lost_to_restarts"] > 0 and second["seconds"]["training_steps"] > 0
  assert second["seconds"]["startup_and_compile"] > 0
  line = [x for x in rerun.stdout.splitlines() if x.startswith("goodput ")]
  assert len(line) == 1 and f"({lost} steps redone); workdir total over 2 attempt(s)" in line[0], \
      rerun.stdout[-2000:]
  with open(os.path.join(killed, "metrics.jsonl")) as f:
    logged = [r for r in map(json.loads, f) if "goodput/attempts" in r]
  assert len(logged) == 1 and logged[0]["step"] == STEPS
  assert (logged[0]["goodput/attempts"], logged[0]["goodput/total_lost_steps"]) == (2, lost)
  assert logged[0]["goodput/total_wall_seconds"] == pytest.approx(
      first["wall_seconds"] + second["wall_seconds"])


def test_dead_data_worker_saves_the_last_good_step(tokenizer_path, tmp_path, straight):
  # One Grain worker per data shard yields the same batches as none.
  overrides = tiny_overrides(tokenizer_path, steps=STEPS, **{"data.num_workers": 1})
  workdir = str(tmp_path / "run")
  result = _run_with_fault(workdir, overrides, "killworkers@3")
  assert result.returncode == 2
  # Batches already prefetched carry the run a few steps past the kill.
  match = re.fullmatch(r"jpeglm: error: data failed at step (\d+): RuntimeError: Worker process "
                       r"was terminated .*; saved step (\d+) in .*checkpoints; rerun the same "
                       r"command to resume", _error_line(result.stderr))
  assert match, result.stderr[-3000:]
  failed, saved = int(match[1]), int(match[2])
  assert 3 < failed <= STEPS and saved == failed - 1
  assert max(losses(workdir)) == saved
  assert str(saved) in os.listdir(os.path.join(workdir, "checkpoints"))
  run_train(workdir, overrides)
  assert losses(workdir) == straight


def test_nonfinite_loss_saves_the_last_good_step(tokenizer_path, tmp_path, straight):
  overrides = tiny_overrides(tokenizer_path, steps=STEPS)
  workdir = str(tmp_path / "run")
  result = _run_with_fault(workdir, overrides, "nan@5")
  assert result.returncode == 2
  assert re.fullmatch(r"jpeglm: error: non-finite loss nan \(grad norm nan\) at step 5; saved "
                      r"step 4 \(the last good state\) in .*", _error_line(result.stderr))
  # Step 5 and the step queued behind it left the state alone: step 4 is the last one trained.
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "4"]
  run_train(workdir, overrides)
  assert losses(workdir) == straight


def test_failed_checkpoint_write_stops_and_keeps_the_previous(tokenizer_path, tmp_path,
                                                              straight):
  overrides = tiny_overrides(tokenizer_path, steps=STEPS)
  workdir = str(tmp_path / "run")
  # From step 4 on files cannot grow past 64 KiB (a full disk; chmod does not stop root):
  # checkpoint 3 is written, checkpoint 6's arrays are not.
  result = _run_with_fault(workdir, overrides, "diskfull@4")
  assert result.returncode == 2
  assert re.fullmatch(r"jpeglm: error: could not write checkpoint step 6 to \S+/checkpoints/6: "
                      r".*File too large.*", _error_line(result.stderr))
  # Stopped once the failure was seen, at the latest when the next save waits for it.
  assert max(losses(workdir)) <= 9
  assert [n for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit()] == ["3"]
  rerun = run_train(workdir, overrides)
  assert "resuming from step 3" in rerun.stdout  # the half-written step 6 is not picked
  assert losses(workdir) == straight


def test_unusable_checkpoint_directory_is_one_clear_error(tokenizer_path, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("a file where the directory should be")
  with pytest.raises(JpeglmError, match="cannot write checkpoints to .*checkpoints: .*Not a directory"):
    train_and_evaluate(tiny_config(tokenizer_path), str(workdir))


def _run_two_processes(workdir, overrides, env=None):
  port = free_port()
  procs = [subprocess.Popen(
      train_command(workdir, overrides, "--coordinator", f"127.0.0.1:{port}", "--num-processes",
                    "2", "--process-id", str(i)),
      env={**env_with_devices(4), **(env or {})}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  return [out for out, _ in outputs]


def test_two_processes_match_one_and_stop_together(tokenizer_path, tmp_path):
  # Log and checkpoint steps are far apart: the stop must be agreed at an ordinary step.
  overrides = tiny_overrides(tokenizer_path, steps=6, **{"train.log_every": 5,
                                                         "train.checkpoint_every": 100})
  single = str(tmp_path / "single")
  run_train(single, overrides, devices=8)
  multi = str(tmp_path / "multi")
  # SIGTERM reaches process 1 only, after step 2. Step 3 carries its stop code; both
  # processes read step 3's metrics after dispatching step 4, so both save step 4.
  outs = _run_two_processes(multi, overrides, {"JPEGLM_FAULT": "sigterm@2:1"})
  assert "preempted: saved step 4" in outs[0], outs[0][-2000:]
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["4"]
  _run_two_processes(multi, overrides)  # resumes from step 4
  want, got = losses(single), losses(multi)
  # Steps that carry a stop code (3, 4) are logged too.
  assert sorted(want) == [5, 6] and sorted(got) == [3, 4, 5, 6]
  for step in want:
    np.testing.assert_allclose(got[step], want[step], rtol=1e-5)
  # One set of logs and checkpoints: process 0 writes them.
  assert sorted(os.listdir(os.path.join(multi, "checkpoints"))) == ["4", "6"]
  with open(os.path.join(multi, "metrics.jsonl")) as f:
    assert sum(1 for line in f if '"loss"' in line) == 4  # each step logged once


def test_restore_onto_another_mesh(tokenizer_path, tmp_path):
  flat = {"mesh.data": 8, "mesh.fsdp": 1, "mesh.tensor": 1}
  cube = {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2}
  straight = str(tmp_path / "straight")
  train_and_evaluate(tiny_config(tokenizer_path, steps=6, **flat), straight)
  moved = str(tmp_path / "moved")
  train_and_evaluate(tiny_config(tokenizer_path, steps=3, **flat), moved)
  train_and_evaluate(tiny_config(tokenizer_path, steps=6, **cube), moved)
  want, got = losses(straight), losses(moved)
  for step in (4, 5, 6):
    np.testing.assert_allclose(got[step], want[step], rtol=1e-5)


def test_damaged_latest_checkpoint_falls_back(tokenizer_path, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  train_and_evaluate(tiny_config(tokenizer_path, steps=6), workdir)
  first = losses(workdir)
  state_dir = os.path.join(workdir, "checkpoints", "6", "state")
  for name in os.listdir(state_dir):
    path = os.path.join(state_dir, name)
    shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
  with caplog.at_level("WARNING"):
    train_and_evaluate(tiny_config(tokenizer_path, steps=6), workdir)
  assert "checkpoint 6" in caplog.text and "damaged" in caplog.text
  assert losses(workdir)[6] == first[6]  # steps 4..6 trained again from step 3


def test_sigterm_saves_and_stops(tokenizer_path, tmp_path):
  workdir = str(tmp_path / "run")
  overrides = tiny_overrides(tokenizer_path, steps=200, **{"train.checkpoint_every": 100})
  result = subprocess.run(train_command(workdir, overrides),
                          env={**env_with_devices(8), "JPEGLM_FAULT": "sigterm@2"},
                          capture_output=True, text=True, timeout=600)
  # Noticed before step 3's batch, agreed from step 3's metrics once step 4 is queued.
  assert result.returncode == 0 and "preempted: saved step 4;" in result.stdout, result.stderr
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
  assert sorted(losses(workdir)) == [1, 2, 3, 4]


def test_errors_before_compute(tokenizer_path, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  assert main(["train", "--config", CONFIG, "--workdir", workdir,
               "--config.train.nonsense=1"]) == 2
  assert "unknown config key 'train.nonsense'" in capsys.readouterr().err
  with pytest.raises(ConfigError, match="needs 3 devices|do not divide"):
    train_and_evaluate(tiny_config(tokenizer_path, **{"mesh.data": 3, "mesh.fsdp": 1}), workdir)
  with pytest.raises(ConfigError, match="model.vocab_size is 400"):
    train_and_evaluate(tiny_config(tokenizer_path, **{"model.vocab_size": 400}), workdir)
  train_and_evaluate(tiny_config(tokenizer_path, steps=3), workdir)
  with pytest.raises(ConfigError, match="model.d_model=64"):
    train_and_evaluate(tiny_config(tokenizer_path, **{"model.d_model": 128}), workdir)


def test_time_budget_saves_and_stops(tokenizer_path, tmp_path):
  workdir = str(tmp_path / "run")
  # The budget runs out at step 1, which is also a checkpoint step: saved once, no clash.
  train_and_evaluate(tiny_config(tokenizer_path, steps=6, **{"train.time_budget_minutes": 1e-4,
                                                               "train.checkpoint_every": 1}),
                     workdir)
  assert sorted(losses(workdir)) == [1]
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "1"))
