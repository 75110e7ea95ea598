"""launch/: TPU and GPU launchers (dry runs, parsed), SLURM device counts through a fake srun
and JAX's own SLURM detection, the expected-device-count check, a 2-process local run."""

import json
import os
import shlex
import subprocess
import sys
import tomllib

from packaging.specifiers import SpecifierSet

from jpeglm.runtime import distributed
from tests.launch_helpers import CONFIG_7B, FAKES, commands, launch, train_tail
from tests.train_helpers import CONFIG, REPO, env_with_devices, tiny_overrides

sys.path.insert(0, REPO)
from launch import tpu_slice  # noqa: E402


def test_tpu_pod_dry_run_prints_every_step():
  result = launch("tpu_pod.sh", "--name", "jp7b", "--zone", "us-east5-a", "--project", "proj",
                  "--accelerator", "v5p-32", "--config", CONFIG_7B, "--workdir", "gs://b/run",
                  "--dry-run", "--teardown", "--", "--config.train.steps=10")
  assert result.returncode == 0, result.stderr
  gcloud = [c for c in commands(result.stdout) if c[0] == "gcloud"]
  assert all(c[1:3] == ["compute", "tpus"] for c in gcloud)
  verbs = [tuple(c[3:5]) for c in gcloud]
  # The queued resource's state is read before anything is created.
  assert verbs[0] == ("queued-resources", "describe")
  create = gcloud[verbs.index(("queued-resources", "create"))]
  assert create[5] == "jp7b"
  flags = dict(zip(create[6::2], create[7::2]))
  assert flags["--accelerator-type"] == "v5p-32" and flags["--zone"] == "us-east5-a"
  assert flags["--project"] == "proj" and flags["--runtime-version"] == "v2-alpha-tpuv5"
  ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
  worker = lambda c: [a for a in c if a.startswith("--worker=")][0].split("=")[1]
  remote = lambda c: c[c.index("--command") + 1]
  # Stop, install and start go to all workers at once; the previous run stops first.
  [stop] = [c for c in ssh if "jpeglm-worker.sh stop" in remote(c)]
  [install] = [c for c in ssh if "pip install" in remote(c)]
  [start] = [c for c in ssh if "jpeglm-worker.sh start" in remote(c)]
  assert worker(stop) == worker(install) == worker(start) == "all"
  assert ssh.index(stop) < ssh.index(install) < ssh.index(start)
  train = shlex.split(remote(start))
  assert train_tail(train) == ["train", "--config", CONFIG_7B, "--workdir", "gs://b/run",
                               "--config.train.steps=10", "--distributed", "auto",
                               "--expect-devices", "16"]
  # Every worker's exit status is read (v5p-32 = 16 chips = 4 workers), worker 0's log streamed.
  status = [worker(c) for c in ssh if remote(c).endswith("jpeglm-worker.sh status")]
  assert status == ["0", "1", "2", "3"]
  assert [worker(c) for c in ssh if remote(c).endswith("follow")] == ["0"]
  assert verbs[-1] == ("queued-resources", "delete")  # --teardown comes last


def test_tpu_install_brings_its_own_python():
  result = launch("tpu_pod.sh", "--name", "x", "--zone", "z", "--accelerator", "v4-8",
                  "--config", CONFIG_7B, "--workdir", "gs://b/run", "--dry-run",
                  "--action", "install")
  assert result.returncode == 0, result.stderr
  [install] = [c[c.index("--command") + 1] for c in commands(result.stdout)
               if "--command" in c and "pip install" in c[c.index("--command") + 1]]
  assert "python3 -m venv" not in install and "pip3 " not in install
  assert f"uv venv --python {tpu_slice.PYTHON_VERSION} --python-preference only-managed" \
      in install
  assert "-e \"$HOME/jpeglm[tpu]\"" in install


def test_python_version_is_one_the_project_supports():
  with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
    requires = tomllib.load(f)["project"]["requires-python"]
  assert tpu_slice.PYTHON_VERSION + ".0" in SpecifierSet(requires)
  assert "3.10.0" not in SpecifierSet(requires)  # the v4 image's python3


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


def test_gpu_dry_run_single_node_and_slurm_one_task_per_gpu():
  one = launch("gpu.sh", "--config", CONFIG_7B, "--workdir", "/shared/run", "--gpus", "8",
               "--dry-run")
  assert one.returncode == 0, one.stderr
  [cmd] = commands(one.stdout)
  assert cmd[:2] == ["env", "CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7"]
  assert train_tail(cmd) == ["train", "--config", CONFIG_7B, "--workdir", "/shared/run",
                             "--expect-devices", "8"]

  many = launch("gpu.sh", "--config", CONFIG_7B, "--workdir", "/shared/run", "--gpus", "8",
                "--nodes", "4", "--partition", "a100", "--cpus-per-node", "96", "--dry-run",
                "--config.mesh.tensor=8")
  assert many.returncode == 0, many.stderr
  [cmd] = commands(many.stdout)
  assert cmd[0] == "srun"
  flags = cmd[1:cmd.index("jpeglm")]
  for flag in ("--nodes=4", "--ntasks-per-node=8", "--gpus-per-node=8", "--gpu-bind=none",
               "--cpus-per-task=12", "--partition=a100"):
    assert flag in flags
  assert train_tail(cmd) == ["train", "--config", CONFIG_7B, "--workdir", "/shared/run",
                             "--config.mesh.tensor=8", "--distributed", "auto",
                             "--expect-devices", "32"]


def read_tasks(folder) -> list[dict]:
  return sorted((json.loads(p.read_text()) for p in folder.glob("task-*.json")),
                key=lambda t: t["procid"])


def test_slurm_tasks_see_every_gpu(tmp_path):
  """gpu.sh --gpus 8 --nodes 4 through a fake srun whose tasks run JAX's SLURM detection."""
  result = launch("gpu.sh", "--config", CONFIG_7B, "--workdir", "/shared/run", "--gpus", "8",
                  "--nodes", "4", env={"FAKE_SRUN_DIR": str(tmp_path)})
  assert result.returncode == 0, result.stderr
  tasks = read_tasks(tmp_path)
  assert len(tasks) == 32 and sum(t["local_devices"] for t in tasks) == 32
  assert [t["process_id"] for t in tasks] == list(range(32))
  assert {t["num_processes"] for t in tasks} == {32}
  assert {t["coordinator"] for t in tasks} == {"gpu001:61586"}  # 61440 + 4242 % 4096
  # On each node the 8 tasks drive GPUs 0..7, one each.
  for node in range(4):
    ids = sorted(t["local_device_ids"][0] for t in tasks if t["nodeid"] == node)
    assert ids == list(range(8))
  expect = {t["command"][t["command"].index("--expect-devices") + 1] for t in tasks}
  assert expect == {"32"}
  assert distributed.device_count_problem(32, 32, 32, 1) is None


def test_one_task_per_node_would_see_4_gpus_and_the_check_says_so(tmp_path):
  """The old layout (`--ntasks-per-node=1`): JAX gives each process GPU 0 only."""
  env = dict(os.environ, FAKE_SRUN_DIR=str(tmp_path),
             PATH=os.pathsep.join([FAKES, os.path.dirname(sys.executable), os.environ["PATH"]]))
  subprocess.run([os.path.join(FAKES, "srun"), "--nodes=4", "--ntasks-per-node=1",
                  "--gpus-per-node=8", "jpeglm", "train"], env=env, check=True,
                 capture_output=True)
  tasks = read_tasks(tmp_path)
  found = sum(t["local_devices"] for t in tasks)
  assert found == 4 and {tuple(t["local_device_ids"]) for t in tasks} == {(0,)}
  problem = distributed.device_count_problem(found, 32, len(tasks), 1)
  assert problem and "one task per GPU" in problem and "JAX sees 4 device(s)" in problem


def test_train_stops_before_any_compute_when_the_device_count_differs(tmp_path):
  workdir = tmp_path / "run"
  result = subprocess.run(
      [sys.executable, "-m", "jpeglm", "train", "--config", CONFIG, "--workdir", str(workdir),
       "--expect-devices", "3"], capture_output=True, text=True, env=env_with_devices(2),
      cwd=REPO, timeout=120)
  assert result.returncode == 2
  assert "devices: 2 in all, expected 3; process 0 of 1 has 2 local cpu" in result.stdout
  err = result.stderr.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("jpeglm: error: JAX sees 2 device(s)")
  assert "launched for 3" in err[0]
  assert not workdir.exists()  # nothing was written: the check comes before any compute


def test_local_two_processes_train_end_to_end(tokenizer_path, tmp_path):
  workdir = tmp_path / "run"
  steps = 4
  result = launch("local.sh", "--processes", "2", "--devices-per-process", "2",
                  "--config", CONFIG, "--workdir", str(workdir), "--",
                  *tiny_overrides(tokenizer_path, steps=steps, **{"train.checkpoint_every": 2}),
                  timeout=300)
  logs = {i: (tmp_path / f"run.process-{i}.log") for i in range(2)}
  assert result.returncode == 0, result.stderr + logs[0].read_text()[-3000:]
  for i in range(2):
    assert f"devices: 4 in all, expected 4; process {i} of 2 has 2 local" in logs[i].read_text()
  assert "2 process(es)" in logs[0].read_text() and "mesh {'data': 1, 'fsdp': 4" in \
      logs[0].read_text()
  rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  loss_steps = [r["step"] for r in rows if "loss" in r]
  assert loss_steps == list(range(1, steps + 1))  # each step logged once, by process 0 only
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2", "4"]
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      "run", "run.process-0.log", "run.process-1.log"]
