"""launch/tpu_pod.sh against a fake gcloud (tests/fakes/gcloud) that replays queued-resource
states and runs each worker's commands here, in a home directory per worker: waiting, reruns,
FAILED/SUSPENDED/DELETING and preempted nodes, stale runs, every worker's exit status; several
slices (--num-slices): one queued resource, every worker of every slice started alike."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import threading

import pytest

from tests.launch_helpers import CONFIG_7B, FAKES, commands, launch, train_tail
from tests.train_helpers import REPO

SLICE = ["--name", "jp", "--zone", "us-east5-a", "--accelerator", "v5p-32",
         "--config", CONFIG_7B, "--workdir", "gs://b/run", "--poll-seconds", "0.05"]


class FakeCloud:
  def __init__(self, root, workers: int = 4, slices: int = 1):
    self.root = root
    (root / "workers").write_text(str(workers))
    self.workers, self.slices = workers, slices
    if slices > 1:  # TPU VMs jp-0 .. jp-(slices-1), as a multislice queued resource names them
      (root / "slices").write_text(str(slices))

  def set(self, name: str, *lines: str) -> None:
    (self.root / name).write_text("\n".join(lines) + "\n")

  def home(self, worker: int, slice_: int = 0):
    path = (self.root / f"worker-{worker}" if self.slices == 1
            else self.root / f"jp-{slice_}" / f"worker-{worker}")
    path.mkdir(parents=True, exist_ok=True)
    return path

  def homes(self) -> list:
    return [self.home(w, s) for s in range(self.slices) for w in range(self.workers)]

  def installed(self) -> None:
    """Each worker as `--action install` leaves it: the tree with a (fake) trainer."""
    for home in self.homes():
      bin_dir = home / "jpeglm" / ".venv" / "bin"
      bin_dir.mkdir(parents=True, exist_ok=True)
      shutil.copy(os.path.join(FAKES, "jpeglm_worker_train"), bin_dir / "jpeglm")

  def calls(self) -> list[list[str]]:
    path = self.root / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []

  def verbs(self) -> list[tuple[str, str]]:
    return [tuple(c[2:4]) for c in self.calls()]

  def remote(self) -> list[str]:
    """The --command of every ssh call, in order."""
    return [c[c.index("--command") + 1] for c in self.calls() if "--command" in c]

  def run(self, *args: str, **kw):
    slices = ["--num-slices", str(self.slices)] if self.slices > 1 else []
    return launch("tpu_pod.sh", *SLICE, *slices, *args, env={"FAKE_GCLOUD_DIR": str(self.root)},
                  **kw)


@pytest.fixture
def cloud(tmp_path):
  return FakeCloud(tmp_path)


def test_waits_for_resources_then_installs_trains_and_reports(cloud):
  cloud.set("create_states", "WAITING_FOR_RESOURCES", "WAITING_FOR_RESOURCES", "PROVISIONING",
            "ACTIVE")
  result = cloud.run()
  assert result.returncode == 0, result.stdout + result.stderr
  verbs = cloud.verbs()
  assert verbs.count(("queued-resources", "create")) == 1
  assert verbs.count(("queued-resources", "describe")) >= 4  # polled until ACTIVE
  assert "jp: WAITING_FOR_RESOURCES; waiting" in result.stdout
  assert "jp: PROVISIONING; waiting" in result.stdout
  for w in range(4):
    home = cloud.home(w)
    assert "uv venv --python 3.11" in (home / "uv-calls.txt").read_text()
    assert (home / "jpeglm" / "pyproject.toml").exists()  # the committed tree, unpacked
    argv = (home / "train-argv.txt").read_text().split()
    assert argv[:1] == ["train"] and argv[-4:] == ["--distributed", "auto",
                                                   "--expect-devices", "16"]
    assert (home / "jpeglm-train.rc").read_text().strip() == "0"
  assert "fake training on worker 0" in result.stdout  # worker 0's log, streamed
  assert [f"worker {w}: exit 0" in result.stdout for w in range(4)] == [True] * 4
  assert "all 4 workers exited 0" in result.stdout


def test_rerun_while_waiting_does_not_create_again(cloud):
  cloud.set("qr_states", "WAITING_FOR_RESOURCES", "WAITING_FOR_RESOURCES", "ACTIVE")
  result = cloud.run("--action", "up")
  assert result.returncode == 0, result.stderr
  assert ("queued-resources", "create") not in cloud.verbs()
  assert "jp: WAITING_FOR_RESOURCES; waiting" in result.stdout

  cloud.set("qr_states", "ACCEPTED")  # still queued when the rerun gives up waiting
  result = cloud.run("--action", "up", "--wait-minutes", "0.003")
  assert result.returncode == 2 and ("queued-resources", "create") not in cloud.verbs()
  err = result.stderr.strip()
  assert len(err.splitlines()) == 1 and "still ACCEPTED" in err and "rerun to keep waiting" in err


@pytest.mark.parametrize("state, hint", [("FAILED", "--action down"),
                                         ("SUSPENDED", "--action down"),
                                         ("DELETING", "NOT_FOUND")])
def test_failed_suspended_or_deleting_stops_with_one_line(cloud, state, hint):
  cloud.set("qr_states", state)
  result = cloud.run()
  assert result.returncode == 2
  err = result.stderr.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith(f"launch: error: queued resource jp is {state}") and hint in err
  assert set(cloud.verbs()) == {("queued-resources", "describe")}  # nothing created or run


def test_a_preempted_node_is_not_reused(cloud):
  cloud.set("qr_states", "ACTIVE")
  cloud.set("node_state", "PREEMPTED")
  result = cloud.run()
  assert result.returncode == 2
  assert "TPU VM jp is PREEMPTED" in result.stderr and "--action down" in result.stderr
  assert not any(v[0] == "tpu-vm" and v[1] in ("ssh", "scp") for v in cloud.verbs())


@pytest.mark.parametrize("slices", [1, 2])
def test_stale_processes_are_stopped_before_training(tmp_path, slices):
  cloud = FakeCloud(tmp_path, slices=slices)
  cloud.set("qr_states", "ACTIVE")
  cloud.installed()
  stale = []
  for home in cloud.homes():
    # A run left by an earlier launch: its own process group, recorded in the pid file.
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it, as init would
    (home / "jpeglm-train.pid").write_text(f"{proc.pid}\n")
    stale.append(proc)
  try:
    result = cloud.run("--action", "up,train,logs")
    assert result.returncode == 0, result.stdout + result.stderr
    for proc in stale:
      assert proc.wait(timeout=10) == -signal.SIGTERM
    remote = cloud.remote()
    stop = [i for i, c in enumerate(remote) if "jpeglm-worker.sh stop" in c]
    start = [i for i, c in enumerate(remote) if "jpeglm-worker.sh start" in c]
    assert len(stop) == len(start) == slices and max(stop) < min(start)
    assert result.stdout.count("stopping the previous run") == cloud.workers * slices
    for home in cloud.homes():
      assert (home / "train-argv.txt").exists()
  finally:
    for proc in stale:
      if proc.poll() is None:
        proc.kill()


def test_a_failing_worker_2_fails_the_launch(cloud):
  cloud.set("qr_states", "ACTIVE")
  cloud.installed()
  (cloud.home(2) / "exit-code").write_text("3\n")
  result = cloud.run("--action", "train,logs")
  assert result.returncode == 1, result.stdout + result.stderr
  out = result.stdout
  assert "worker 0: exit 0" in out and "worker 1: exit 0" in out and "worker 3: exit 0" in out
  assert "worker 2: exit 3" in out and "  | worker 2: training failed" in out
  err = result.stderr.strip()
  assert len(err.splitlines()) == 1 and "1 of 4 workers failed: worker 2 exit 3" in err


def test_a_worker_whose_run_vanished_fails_the_launch(cloud):
  """No exit status and no process (killed, or the VM restarted): reported as lost."""
  cloud.set("qr_states", "ACTIVE")
  gone = subprocess.Popen(["true"])
  gone.wait()
  for w in range(cloud.workers):  # as a killed run leaves them: a pid file, a log, no status
    shutil.copy(os.path.join(REPO, "launch", "tpu_worker.sh"), cloud.home(w) / "jpeglm-worker.sh")
    (cloud.home(w) / "jpeglm-train.pid").write_text(f"{gone.pid}\n")
    (cloud.home(w) / "jpeglm-train.log").write_text(f"step 7 on worker {w}\n")
  (cloud.home(1) / "jpeglm-train.rc").write_text("0\n")
  result = cloud.run("--action", "logs")
  assert result.returncode == 1
  assert "step 7 on worker 0" in result.stdout  # worker 0's log is still shown
  assert [f"worker {w}: lost" in result.stdout for w in (0, 2, 3)] == [True] * 3
  assert "worker 1: exit 0" in result.stdout
  assert "3 of 4 workers failed" in result.stderr


# ------------------------------------------------------------------ several slices (DCN)

def test_two_slices_dry_run_starts_every_worker_of_both_slices_alike():
  result = launch("tpu_pod.sh", *SLICE, "--num-slices", "2", "--dry-run", "--teardown", "--",
                  "--config.train.steps=10")
  assert result.returncode == 0, result.stderr
  gcloud = [c for c in commands(result.stdout) if c[0] == "gcloud"]
  verbs = [tuple(c[3:5]) for c in gcloud]
  # One queued resource for both slices: TPU VMs jp-0 and jp-1, provisioned together.
  [create] = [c for c in gcloud if tuple(c[3:5]) == ("queued-resources", "create")]
  flags = dict(zip(create[6::2], create[7::2]))
  assert create[5] == "jp" and "--node-id" not in create
  assert flags["--node-count"] == "2" and flags["--node-prefix"] == "jp"
  assert flags["--accelerator-type"] == "v5p-32"
  ssh = [c for c in gcloud if c[3:5] == ["tpu-vm", "ssh"]]
  worker = lambda c: [a for a in c if a.startswith("--worker=")][0].split("=")[1]
  remote = lambda c: c[c.index("--command") + 1]
  scp = [(c[5], c[6].split(":")[0], worker(c)) for c in gcloud if c[3:5] == ["tpu-vm", "scp"]]
  assert {(node, w) for _, node, w in scp} == {("jp-0", "all"), ("jp-1", "all")}
  assert len(scp) == 4  # the worker script and the tree, to each slice
  # Stop, install and start each go to all workers of both slices; stop before install before
  # start everywhere.
  for step in ("jpeglm-worker.sh stop", "pip install", "jpeglm-worker.sh start"):
    on = [c for c in ssh if step in remote(c)]
    assert [(c[5], worker(c)) for c in on] == [("jp-0", "all"), ("jp-1", "all")], step
  order = [c for c in ssh if "jpeglm-worker.sh st" in remote(c) or "pip install" in remote(c)]
  assert max(i for i, c in enumerate(order) if "stop" in remote(c)) < min(
      i for i, c in enumerate(order) if "start" in remote(c))
  start = [remote(c) for c in ssh if "jpeglm-worker.sh start" in remote(c)]
  assert start[0] == start[1]  # the same arguments on every worker of every slice
  assert "MEGASCALE" not in start[0]  # the queued resource's TPU VMs get it from the runtime
  assert train_tail(shlex.split(start[0])) == [
      "train", "--config", CONFIG_7B, "--workdir", "gs://b/run", "--config.train.steps=10",
      "--config.mesh.dcn_data=2", "--distributed", "auto", "--expect-devices", "32"]
  # Every worker of every slice reports (2 x v5p-32 = 2 x 4 workers); slice 0's worker 0 streams.
  status = [(c[5], worker(c)) for c in ssh if remote(c).endswith("jpeglm-worker.sh status")]
  assert status == [(f"jp-{s}", str(w)) for s in range(2) for w in range(4)]
  assert [(c[5], worker(c)) for c in ssh if remote(c).endswith("follow")] == [("jp-0", "0")]
  assert verbs[-1] == ("queued-resources", "delete")  # the queued resource takes both slices
  assert "2 x v5p-32 (jp-0, jp-1): 32 chips, 32 JAX devices, 8 workers" in result.stdout


def test_two_slices_queue_install_train_and_report_every_worker(tmp_path):
  cloud = FakeCloud(tmp_path, slices=2)
  (tmp_path / "slices").unlink()  # no slices yet: the launcher's create asks for 2
  cloud.set("create_states", "PROVISIONING", "ACTIVE")
  (cloud.home(2, 1) / "exit-code").write_text("3\n")
  result = cloud.run()
  assert result.returncode == 1, result.stdout + result.stderr
  assert ("queued-resources", "create") in cloud.verbs()
  assert (tmp_path / "slices").read_text().strip() == "2"
  argvs = set()
  for home in cloud.homes():
    assert "uv venv --python 3.11" in (home / "uv-calls.txt").read_text()
    argvs.add((home / "train-argv.txt").read_text())
    assert (home / "train-env.txt").read_text() == ""  # MEGASCALE_* is the runtime's to set
  [argv] = argvs  # every worker of both slices, the same arguments
  assert argv.split()[-5:] == ["--config.mesh.dcn_data=2", "--distributed", "auto",
                               "--expect-devices", "32"]
  assert "fake training on worker 0" in result.stdout  # jp-0's worker 0, streamed
  out = result.stdout
  assert [f"slice {s} worker {w}: exit 0" in out
          for s in range(2) for w in range(4) if (s, w) != (1, 2)] == [True] * 7
  assert "slice 1 worker 2: exit 3" in out and "  | worker 2: training failed" in out
  err = result.stderr.strip()
  assert len(err.splitlines()) == 1 and "1 of 8 workers failed: slice 1 worker 2 exit 3" in err


def test_slices_made_without_a_queued_resource_get_megascale_from_the_launcher(tmp_path):
  cloud = FakeCloud(tmp_path, workers=2, slices=2)
  cloud.set("node_state", "READY")  # TPU VMs jp-0, jp-1 created by hand, no queued resource
  cloud.installed()
  result = cloud.run("--action", "up,train,logs,down")
  assert result.returncode == 0, result.stdout + result.stderr
  assert "reusing the TPU VMs jp-0, jp-1" in result.stdout
  assert ("queued-resources", "create") not in cloud.verbs()
  for s in range(2):
    for w in range(2):
      env = (cloud.home(w, s) / "train-env.txt").read_text().split()
      assert env == ["MEGASCALE_COORDINATOR_ADDRESS=10.0.0.0:8081",  # slice 0, worker 0
                     "MEGASCALE_NUM_SLICES=2", "MEGASCALE_PORT=8081", f"MEGASCALE_SLICE_ID={s}"]
  assert "all 4 workers exited 0" in result.stdout
  deleted = [c[4] for c in cloud.calls() if c[2:4] == ["tpu-vm", "delete"]]
  assert deleted == ["jp-0", "jp-1"]  # down: each TPU VM, there being no queued resource


def test_some_slices_without_a_queued_resource_stop_the_launch(tmp_path):
  cloud = FakeCloud(tmp_path, slices=2)
  cloud.set("node_state", "READY")
  cloud.set("gone", "jp-1")  # jp-0 made by hand, jp-1 not
  result = cloud.run()
  assert result.returncode == 2
  err = result.stderr.strip()
  assert len(err.splitlines()) == 1 and "only jp-0 exist" in err and "missing: jp-1" in err
  assert not any(v[1] in ("create", "ssh", "scp") for v in cloud.verbs())


MESH_CONFIG = """import ml_collections


def get_config(arg=None):
  config = ml_collections.ConfigDict()
  config.mesh = ml_collections.ConfigDict(
      {"data": 1, "fsdp": -1, "context": 1, "tensor": 1, "dcn_data": 1})
  return config
"""


def test_a_given_dcn_data_must_be_the_slice_count(tmp_path):
  """A config that declares mesh.dcn_data: the user may give it, equal to --num-slices."""
  config = tmp_path / "mesh.py"
  config.write_text(MESH_CONFIG)
  dry = ["--name", "jp", "--zone", "z", "--accelerator", "v5p-32", "--config", str(config),
         "--workdir", "gs://b/run", "--dry-run", "--action", "train"]
  same = launch("tpu_pod.sh", *dry, "--num-slices", "2", "--config.mesh.dcn_data=2")
  assert same.returncode == 0, same.stderr
  [start] = {c[c.index("--command") + 1] for c in commands(same.stdout)
             if "jpeglm-worker.sh start" in " ".join(c)}
  assert shlex.split(start).count("--config.mesh.dcn_data=2") == 1  # the user's, not twice
  for slices, given in (("2", "3"), ("1", "2")):
    result = launch("tpu_pod.sh", *dry, "--num-slices", slices, f"--config.mesh.dcn_data={given}")
    assert result.returncode == 2 and result.stdout == ""
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1
    assert f"mesh.dcn_data={given} but --num-slices {slices}" in err


def test_two_slices_refuse_a_mesh_larger_than_one_slice():
  result = launch("tpu_pod.sh", *SLICE, "--num-slices", "2", "--dry-run",
                  "--config.mesh.fsdp=32")  # 32 devices in all, but 16 in each slice
  assert result.returncode == 2 and result.stdout == ""
  err = result.stderr.strip()
  assert len(err.splitlines()) == 1, err
  assert "cannot run on 2 x v5p-32 (16 devices on 4 hosts)" in err and "per slice" in err
  bad = launch("tpu_pod.sh", *SLICE, "--num-slices", "0", "--dry-run")
  assert bad.returncode == 2 and "--num-slices" in bad.stderr
