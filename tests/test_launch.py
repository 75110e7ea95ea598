"""launch/: TPU and GPU launchers (dry runs, parsed), and a 2-process local run end to end."""

import json
import os
import shlex
import subprocess
import sys

import pytest

from tests.train_helpers import CONFIG, REPO, tiny_overrides, train_tiny_tokenizer

LAUNCH = os.path.join(REPO, "launch")
CONFIG_7B = "configs/jpeglm.py:size=7b"


def launch(script: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, PYTHON=sys.executable, JAX_PLATFORMS="cpu")
  return subprocess.run([os.path.join(LAUNCH, script), *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=300)


def commands(stdout: str) -> list[list[str]]:
  """The printed commands, shell-split (comment lines dropped)."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith("#")]


def train_tail(argv: list[str]) -> list[str]:
  return argv[argv.index("train"):]


def test_tpu_pod_dry_run_prints_every_step_for_each_worker():
  result = launch("tpu_pod.sh", "--name", "jp7b", "--zone", "us-east5-a", "--project", "proj",
                  "--accelerator", "v5p-32", "--config", CONFIG_7B, "--workdir", "gs://b/run",
                  "--dry-run", "--teardown", "--", "--config.train.steps=10")
  assert result.returncode == 0, result.stderr
  cmds = commands(result.stdout)
  gcloud = [c for c in cmds if c[0] == "gcloud"]
  assert all(c[1:3] == ["compute", "tpus"] for c in gcloud)
  verbs = [tuple(c[3:5]) for c in gcloud]
  assert ("queued-resources", "create") in verbs and ("queued-resources", "delete") in verbs
  create = gcloud[verbs.index(("queued-resources", "create"))]
  assert create[5] == "jp7b"
  flags = dict(zip(create[6::2], create[7::2]))
  assert flags["--accelerator-type"] == "v5p-32" and flags["--zone"] == "us-east5-a"
  assert flags["--project"] == "proj" and flags["--runtime-version"].startswith("v2-alpha-tpuv5")
  # Training starts once per worker (v5p-32 = 16 chips = 4 hosts), all with the same command.
  ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
  starts = {}
  for c in ssh:
    inner = c[c.index("--command") + 1]
    if " train " not in inner:
      continue
    worker = [a for a in c if a.startswith("--worker=")][0].split("=")[1]
    # --command 'rm ... && (nohup sh -c '<inner>' > /dev/null 2>&1 &)': unwrap both levels.
    shell = shlex.split(inner)
    train = shlex.split(shell[shell.index("-c") + 1])
    starts[worker] = train_tail(train[:train.index(">")])
  assert sorted(starts) == ["0", "1", "2", "3"]
  expected = ["train", "--config", CONFIG_7B, "--workdir", "gs://b/run",
              "--config.train.steps=10", "--distributed", "auto"]
  assert all(s == expected for s in starts.values()), starts
  assert any("pip install" in c[c.index("--command") + 1] for c in ssh)
  assert verbs[-1] == ("queued-resources", "delete")  # --teardown comes last


def test_tpu_pod_refuses_a_mesh_larger_than_the_slice():
  result = launch("tpu_pod.sh", "--name", "x", "--zone", "z", "--accelerator", "v4-64",
                  "--config", CONFIG_7B, "--workdir", "gs://b/run", "--dry-run",
                  "--config.mesh.fsdp=64")
  assert result.returncode == 2 and result.stdout == ""
  err = result.stderr.strip()
  assert len(err.splitlines()) == 1
  assert err.startswith("launch: error:") and "v4-64 (32 devices on 8 hosts)" in err
  assert "needs 64 devices" in err


def test_tpu_pod_multi_host_needs_a_gcs_workdir():
  result = launch("tpu_pod.sh", "--name", "x", "--zone", "z", "--accelerator", "v4-64",
                  "--config", CONFIG_7B, "--workdir", "/tmp/run", "--dry-run")
  assert result.returncode == 2 and "gs://" in result.stderr


def test_gpu_dry_run_single_node_and_slurm():
  one = launch("gpu.sh", "--config", CONFIG_7B, "--workdir", "/shared/run", "--gpus", "8",
               "--dry-run")
  assert one.returncode == 0, one.stderr
  [cmd] = commands(one.stdout)
  assert cmd[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7"]
  assert train_tail(cmd) == ["train", "--config", CONFIG_7B, "--workdir", "/shared/run"]

  many = launch("gpu.sh", "--config", CONFIG_7B, "--workdir", "/shared/run", "--gpus", "8",
                "--nodes", "4", "--partition", "a100", "--dry-run", "--config.mesh.tensor=8")
  assert many.returncode == 0, many.stderr
  [cmd] = commands(many.stdout)
  assert cmd[0] == "srun"
  flags = cmd[1:cmd.index("jpeglm")]
  for flag in ("--nodes=4", "--ntasks-per-node=1", "--gpus-per-node=8", "--partition=a100"):
    assert flag in flags
  assert train_tail(cmd) == ["train", "--config", CONFIG_7B, "--workdir", "/shared/run",
                             "--config.mesh.tensor=8", "--distributed", "auto"]


def test_gpu_refuses_a_mesh_larger_than_the_nodes():
  result = launch("gpu.sh", "--config", CONFIG_7B, "--workdir", "/shared/run", "--gpus", "8",
                  "--nodes", "2", "--dry-run", "--config.mesh.tensor=32")
  assert result.returncode == 2 and result.stdout == ""
  assert len(result.stderr.strip().splitlines()) == 1
  assert "2 node(s) x 8 GPUs (16 devices)" in result.stderr
  assert "do not divide the 16 devices" in result.stderr


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
  return train_tiny_tokenizer(tmp_path_factory.mktemp("tok") / "tokenizer.model")


def test_local_two_processes_train_end_to_end(tokenizer_path, tmp_path):
  workdir = tmp_path / "run"
  steps = 4
  result = launch("local.sh", "--processes", "2", "--devices-per-process", "2",
                  "--config", CONFIG, "--workdir", str(workdir), "--",
                  *tiny_overrides(tokenizer_path, steps=steps, **{"train.checkpoint_every": 2}))
  logs = {i: (tmp_path / f"run.process-{i}.log") for i in range(2)}
  assert result.returncode == 0, result.stderr + logs[0].read_text()[-3000:]
  assert "2 process(es)" in logs[0].read_text() and "mesh {'data': 1, 'fsdp': 4" in \
      logs[0].read_text()
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  loss_steps = [r["step"] for r in rows if "loss" in r]
  assert loss_steps == list(range(1, steps + 1))  # each step logged once, by process 0 only
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "run", "run.process-0.log", "run.process-1.log"]
