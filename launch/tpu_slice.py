"""A Cloud TPU VM slice for `launch/tpu_pod.sh`: queued resource -> install -> train -> every
worker's exit status.

Each step reads the slice's real state first, so a rerun picks up where the last one stopped:
  - up: the queued resource's `state.state` decides (wait while CREATING, ACCEPTED,
    WAITING_FOR_RESOURCES or PROVISIONING; stop with one line on FAILED, SUSPENDING,
    SUSPENDED or DELETING); once it is ACTIVE the TPU VM must be READY (PREEMPTED or STOPPED
    is never reused as if it were ready). Only a name that gcloud reports NOT_FOUND is created.
  - install: the project into ~/jpeglm/.venv with a Python the project supports (uv's own
    build of PYTHON_VERSION), whatever python3 the image ships.
  - train: the previous run on every worker is stopped first (launch/tpu_worker.sh keeps a pid
    file), then training starts detached on all workers at once.
  - logs: worker 0's log is streamed; then every worker's exit status is read and reported.
"""

from __future__ import annotations

import json
import os
import shlex
import time

from launch.runner import LaunchError, Runner, WorkersFailed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_VERSION = "3.11"  # pyproject.toml's requires-python; tests check they agree
# gcloud runtime (VM image) per TPU generation (Cloud TPU "TPU software versions").
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5",
                    "v5e": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
REMOTE_DIR = "jpeglm"  # on each worker, under $HOME
WORKER_SCRIPT = "jpeglm-worker.sh"  # launch/tpu_worker.sh, copied to each worker's $HOME
UV_INSTALLER = "https://astral.sh/uv/install.sh"

QR_WAIT = ("CREATING", "ACCEPTED", "WAITING_FOR_RESOURCES", "PROVISIONING")
_DELETE_AND_RERUN = "delete it (--action down) and rerun to queue a new one"
QR_STOP = {
    "FAILED": f"the request failed; {_DELETE_AND_RERUN}",
    "SUSPENDING": f"the slice is being taken back (preempted); {_DELETE_AND_RERUN}",
    "SUSPENDED": f"the slice was taken back (preempted); {_DELETE_AND_RERUN}",
    "DELETING": "it is being deleted; rerun once `gcloud compute tpus queued-resources "
                "describe` reports NOT_FOUND",
}
NODE_WAIT = ("CREATING", "STARTING", "RESTARTING", "REPAIRING", "REIMAGING")
NODE_STOP = {
    "PREEMPTED": _DELETE_AND_RERUN + " (training resumes from the workdir's checkpoint)",
    "TERMINATED": _DELETE_AND_RERUN,
    "STOPPED": "start it (gcloud compute tpus tpu-vm start) or delete it (--action down), "
               "then rerun",
    "STOPPING": "it is stopping; start it again or delete it (--action down), then rerun",
    "DELETING": "it is being deleted; rerun once it is gone",
}


class Slice:
  def __init__(self, args, topo, run: Runner):
    self.args, self.topo, self.run = args, topo, run
    self.name = args.name
    self.where = ["--zone", args.zone] + (["--project", args.project] if args.project else [])
    self._shown: set[str] = set()

  # ------------------------------------------------------------------------------ gcloud

  def tpus(self, *words: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *words]

  def ssh(self, worker: int | str, command: str) -> list[str]:
    return self.tpus("tpu-vm", "ssh", self.name, *self.where, f"--worker={worker}",
                     "--command", command)

  def describe(self, kind: str) -> dict | None:
    """`kind` ("queued-resources" or "tpu-vm") describe as JSON; None when NOT_FOUND (and in
    dry runs). Each command is printed once, not on every poll."""
    argv = self.tpus(kind, "describe", self.name, *self.where, "--format=json")
    line = shlex.join(argv)
    first = line not in self._shown
    self._shown.add(line)
    if self.run.dry_run:
      self.run.show(argv)
      return None
    result = self.run.query(argv, show=first)
    if result.returncode == 0:
      return json.loads(result.stdout or "{}")
    if "not_found" in result.stderr.lower() or "not found" in result.stderr.lower():
      return None
    last = (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise LaunchError(f"{line} failed ({result.returncode}): {last}")

  # ---------------------------------------------------------------------------------- up

  def up(self) -> dict | None:
    """Creates the queued resource unless it exists, and waits until its TPU VM is READY."""
    args = self.args
    deadline = time.monotonic() + 60 * args.wait_minutes
    created, last = False, None
    while True:
      qr = self.describe("queued-resources")
      if qr is None:
        node = self.describe("tpu-vm")
        if node is not None:  # a TPU VM made without a queued resource
          if self.node_ready(node):
            self.run.note(f"reusing the TPU VM {self.name}")
            return node
          state = f"TPU VM {node.get('state')}"
        elif created:
          raise LaunchError(f"the queued resource {self.name} disappeared while waiting for it")
        else:
          self.create()
          created = True
          if self.run.dry_run:
            self.run.note("(then waits until the queued resource is ACTIVE and the TPU VM "
                          f"READY, checking every {args.poll_seconds:g} s)")
            return None
          continue
      else:
        state = (qr.get("state") or {}).get("state", "?")
        if state == "ACTIVE":
          node = self.describe("tpu-vm")
          if node is not None and self.node_ready(node):
            if last is None:
              self.run.note(f"reusing the ACTIVE queued resource {self.name}")
            return node
          state = f"ACTIVE, TPU VM {node.get('state') if node else 'not listed yet'}"
        elif state in QR_STOP:
          error = ((qr.get("state") or {}).get("failedData") or {}).get("error") or {}
          reason = f" ({error['message']})" if error.get("message") else ""
          raise LaunchError(f"queued resource {self.name} is {state}{reason}: {QR_STOP[state]}")
        elif state not in QR_WAIT:
          raise LaunchError(f"queued resource {self.name} is in state {state!r}, which this "
                            "launcher does not know; check it with gcloud and rerun")
      if state != last:
        self.run.note(f"{self.name}: {state}; waiting (every {args.poll_seconds:g} s, up to "
                      f"{args.wait_minutes:g} min; a rerun keeps waiting for the same request)")
        last = state
      if time.monotonic() > deadline:
        raise LaunchError(f"{self.name} is still {state} after {args.wait_minutes:g} minutes: "
                          "rerun to keep waiting (the request stays queued) or --action down "
                          "to give it up")
      time.sleep(args.poll_seconds)

  def create(self) -> None:
    args = self.args
    accelerator = args.accelerator.replace("v5e-", "v5litepod-")
    self.run.run(self.tpus("queued-resources", "create", self.name, "--node-id", self.name,
                           *self.where, "--accelerator-type", accelerator, "--runtime-version",
                           args.runtime_version or RUNTIME_VERSIONS[self.topo.generation])
                 + (["--spot"] if args.spot else []))

  def node_ready(self, node: dict) -> bool:
    """True when READY, False while it comes up; raises (one line) when it cannot be used."""
    state = node.get("state", "?")
    if state == "READY":
      return True
    if state in NODE_WAIT:
      return False
    hint = NODE_STOP.get(state, "rerun when it is READY, or delete it (--action down)")
    raise LaunchError(f"TPU VM {self.name} is {state}: {hint}")

  def workers(self, node: dict | None) -> int:
    """The slice's worker count: gcloud's (one network endpoint per worker VM) when it can be
    asked, else the table in launch/README.md."""
    if self.run.dry_run:
      return self.topo.hosts
    if node is None:
      node = self.describe("tpu-vm")
      if node is None:
        raise LaunchError(f"no TPU VM {self.name} in {self.args.zone}: run --action up first")
      if not self.node_ready(node):
        raise LaunchError(f"TPU VM {self.name} is {node.get('state')}: rerun --action up "
                          "to wait until it is READY")
    count = len(node.get("networkEndpoints") or []) or self.topo.hosts
    if count != self.topo.hosts:
      self.run.note(f"gcloud lists {count} workers for {self.name} (the table says "
                    f"{self.topo.hosts} for {self.args.accelerator}); using {count}")
    return count

  # --------------------------------------------------------------------- install and train

  def prepare(self) -> None:
    """Copies the worker script to every worker and stops the previous run there."""
    self.run.run(self.tpus("tpu-vm", "scp", os.path.join(REPO, "launch", "tpu_worker.sh"),
                           f"{self.name}:{WORKER_SCRIPT}", *self.where, "--worker=all"))
    self.run.run(self.ssh("all", f"bash ~/{WORKER_SCRIPT} stop "
                                 f"{self.args.stop_grace_seconds:g}"))

  def install(self) -> None:
    args = self.args
    remote = f"$HOME/{REMOTE_DIR}"
    if args.git_url:
      fetch = (f"rm -rf {remote} && git clone --quiet {shlex.quote(args.git_url)} {remote} && "
               f"git -C {remote} checkout --quiet {shlex.quote(args.git_ref)}")
    else:
      archive = f"/tmp/jpeglm-{self.name}.tar.gz"
      self.run.note("copying the committed tree (git archive HEAD): commit local changes first")
      self.run.run(["git", "-C", REPO, "archive", "--format=tar.gz", "-o", archive, "HEAD"])
      self.run.run(self.tpus("tpu-vm", "scp", archive, f"{self.name}:jpeglm.tar.gz",
                             *self.where, "--worker=all"))
      fetch = f"rm -rf {remote} && mkdir -p {remote} && tar -xzf $HOME/jpeglm.tar.gz -C {remote}"
    # uv brings its own CPython build: the images' python3 is 3.10 (v4) or undocumented.
    uv = ('export PATH="$HOME/.local/bin:$PATH" && { command -v uv > /dev/null || '
          f'curl -LsSf {UV_INSTALLER} | env UV_INSTALL_DIR="$HOME/.local/bin" '
          'UV_NO_MODIFY_PATH=1 sh; }')
    venv = (f"uv venv --python {PYTHON_VERSION} --python-preference only-managed "
            f"{remote}/.venv && uv pip install --quiet --python {remote}/.venv/bin/python "
            f"-e \"{remote}[tpu]\" && {remote}/.venv/bin/python --version")
    self.run.note(f"installing with Python {PYTHON_VERSION} (uv), not the image's python3")
    self.run.run(self.ssh("all", f"{fetch} && {uv} && {venv}"))

  def start(self, train_args: list[str]) -> None:
    command = shlex.join([".venv/bin/jpeglm", *train_args])
    self.run.run(self.ssh("all", f"bash ~/{WORKER_SCRIPT} start {command}"))

  # ----------------------------------------------------------------------- logs, status

  def logs(self, workers: int) -> None:
    self.run.note("streaming worker 0's log until training ends (Ctrl-C stops only the "
                  "stream; --action logs reattaches)")
    self.run.run(self.ssh(0, f"bash ~/{WORKER_SCRIPT} follow"), check=False)
    self.report(workers)

  def report(self, workers: int) -> None:
    """Reads every worker's status (waiting up to --status-wait-seconds for runs still going);
    prints one line each; raises WorkersFailed unless all exited 0."""
    commands = {w: self.ssh(w, f"bash ~/{WORKER_SCRIPT} status") for w in range(workers)}
    if self.run.dry_run:
      for argv in commands.values():
        self.run.show(argv)
      return
    deadline = time.monotonic() + self.args.status_wait_seconds
    pending, final = list(range(workers)), {}
    while pending:
      results = self.run.query_all([commands[w] for w in pending])
      still = []
      for w, result in zip(pending, results):
        lines = result.stdout.strip().splitlines()
        if result.returncode:
          err = (result.stderr.strip().splitlines() or ["no output"])[-1]
          status, tail = f"unreachable (gcloud exit {result.returncode}: {err})", []
        else:
          status, tail = (lines[0] if lines else "lost"), lines[1:]
        if status == "running" and time.monotonic() < deadline:
          still.append(w)
        final[w] = (status, tail)
      pending = still
      if pending:
        time.sleep(self.args.poll_seconds)
    failed = []
    for w in range(workers):
      status, tail = final[w]
      print(f"worker {w}: {status}", flush=True)
      if status != "exit 0":
        failed.append(f"worker {w} {status}")
        for line in tail:
          print(f"  | {line}", flush=True)
    if failed:
      raise WorkersFailed(f"{len(failed)} of {workers} workers failed: {', '.join(failed)} "
                          f"(logs: ~/jpeglm-train.log on each worker)")
    print(f"all {workers} workers exited 0", flush=True)

  # -------------------------------------------------------------------------------- down

  def down(self) -> None:
    if self.run.dry_run or self.describe("queued-resources") is not None:
      self.run.run(self.tpus("queued-resources", "delete", self.name, *self.where, "--force",
                             "--quiet"))
    elif self.describe("tpu-vm") is not None:
      self.run.run(self.tpus("tpu-vm", "delete", self.name, *self.where, "--quiet"))
    else:
      self.run.note(f"nothing to delete: no queued resource or TPU VM {self.name}")
