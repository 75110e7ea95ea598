"""launch/tpu_pod.sh against a fake gcloud (tests/fakes/gcloud) that replays queued-resource
states and runs each worker's commands here, in a home directory per worker: waiting, reruns,
FAILED/SUSPENDED/DELETING and preempted nodes, stale runs, every worker's exit status."""

import json
import os
import shutil
import signal
import subprocess
import threading

import pytest

from tests.launch_helpers import CONFIG_7B, FAKES, launch
from tests.train_helpers import REPO

SLICE = ["--name", "jp", "--zone", "us-east5-a", "--accelerator", "v5p-32",
         "--config", CONFIG_7B, "--workdir", "gs://b/run", "--poll-seconds", "0.05"]


class FakeCloud:
  def __init__(self, root, workers: int = 4):
    self.root = root
    (root / "workers").write_text(str(workers))
    self.workers = workers

  def set(self, name: str, *lines: str) -> None:
    (self.root / name).write_text("\n".join(lines) + "\n")

  def home(self, worker: int):
    path = self.root / f"worker-{worker}"
    path.mkdir(exist_ok=True)
    return path

  def installed(self) -> None:
    """Each worker as `--action install` leaves it: the tree with a (fake) trainer."""
    for w in range(self.workers):
      bin_dir = self.home(w) / "jpeglm" / ".venv" / "bin"
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
    return launch("tpu_pod.sh", *SLICE, *args, env={"FAKE_GCLOUD_DIR": str(self.root)}, **kw)


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


def test_stale_processes_are_stopped_before_training(cloud):
  cloud.set("qr_states", "ACTIVE")
  cloud.installed()
  stale = []
  for w in range(cloud.workers):
    # A run left by an earlier launch: its own process group, recorded in the pid file.
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    threading.Thread(target=proc.wait, daemon=True).start()  # reap it, as init would
    (cloud.home(w) / "jpeglm-train.pid").write_text(f"{proc.pid}\n")
    stale.append(proc)
  try:
    result = cloud.run("--action", "up,train,logs")
    assert result.returncode == 0, result.stdout + result.stderr
    for proc in stale:
      assert proc.wait(timeout=10) == -signal.SIGTERM
    remote = cloud.remote()
    stop = [i for i, c in enumerate(remote) if "jpeglm-worker.sh stop" in c]
    start = [i for i, c in enumerate(remote) if "jpeglm-worker.sh start" in c]
    assert len(stop) == len(start) == 1 and stop[0] < start[0]
    assert result.stdout.count("stopping the previous run") == cloud.workers
    for w in range(cloud.workers):
      assert (cloud.home(w) / "train-argv.txt").exists()
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
