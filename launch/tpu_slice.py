"""Cloud TPU VM slices for `launch/tpu_pod.sh`: queued resource -> install -> train -> every
worker's exit status, on one slice or on N slices joined over the data-centre network.

Each step reads the slices' real state first, so a rerun picks up where the last one stopped:
  - up: the queued resource's `state.state` decides (wait while CREATING, ACCEPTED,
    WAITING_FOR_RESOURCES or PROVISIONING; stop with one line on FAILED, SUSPENDING,
    SUSPENDED or DELETING); once it is ACTIVE every TPU VM must be READY (PREEMPTED or
    STOPPED is never reused as if it were ready). Only a name that gcloud reports NOT_FOUND is
    created. With --num-slices N the one queued resource NAME holds N TPU VMs (slices)
    NAME-0 .. NAME-(N-1) (`--node-count N --node-prefix NAME`), provisioned together.
  - install: the project into ~/jpeglm/.venv with a Python the project supports (uv's own
    build of PYTHON_VERSION), whatever python3 the image ships, on every worker of every slice.
  - train: the previous run on every worker is stopped first (launch/tpu_worker.sh keeps a pid
    file), then training starts detached on all workers of all slices at once, with the same
    arguments everywhere.
  - logs: worker 0's log (of slice 0) is streamed; then every worker's exit status is read
    and reported.

Several slices find each other through the MEGASCALE_* variables. The Cloud TPU runtime sets
them on the TPU VMs of a multislice queued resource (in the `tpu-env` metadata, which JAX reads
when the environment lacks them); only for slices made without one (TPU VMs NAME-i created by
hand) does the launcher set them, per slice (see launch/README.md, "Several slices").
"""

from __future__ import annotations

import json
import os
import shlex
import time

from jpeglm.fit.chips import TPUS
from launch.runner import LaunchError, Runner, WorkersFailed

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON_VERSION = "3.11"  # pyproject.toml's requires-python; tests check they agree
REMOTE_DIR = "jpeglm"  # on each worker, under $HOME
WORKER_SCRIPT = "jpeglm-worker.sh"  # launch/tpu_worker.sh, copied to each worker's $HOME
UV_INSTALLER = "https://astral.sh/uv/install.sh"
# Slices made without a multislice queued resource: the port the launcher gives the MEGASCALE
# coordinator (the value Ray-based TPU launchers use; the runtime picks its own otherwise).
MEGASCALE_PORT = 8081

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
  """The queued resource `args.name` and its TPU VMs: `name` itself for one slice, `name-0` ..
  `name-(N-1)` for `--num-slices N`."""

  def __init__(self, args, topo, run: Runner):
    self.args, self.topo, self.run = args, topo, run
    self.name = args.name
    self.num_slices = args.num_slices
    self.nodes = ([self.name] if self.num_slices == 1
                  else [f"{self.name}-{i}" for i in range(self.num_slices)])
    self.where = ["--zone", args.zone] + (["--project", args.project] if args.project else [])
    self._shown: set[str] = set()
    self._described: list[dict] | None = None  # the TPU VMs, once READY
    self._queued: bool | None = None  # whether the TPU VMs belong to the queued resource

  # ------------------------------------------------------------------------------ gcloud

  def tpus(self, *words: str) -> list[str]:
    return ["gcloud", "compute", "tpus", *words]

  def ssh(self, node: str, worker: int | str, command: str) -> list[str]:
    return self.tpus("tpu-vm", "ssh", node, *self.where, f"--worker={worker}",
                     "--command", command)

  def on_every_slice(self, command: str) -> None:
    """Runs `command` on all workers of every slice (the slices at once)."""
    self.run.run_all([self.ssh(node, "all", command) for node in self.nodes])

  def describe(self, kind: str, name: str | None = None) -> dict | None:
    """`kind` ("queued-resources" or "tpu-vm") describe of `name` (default: the queued
    resource's name) as JSON; None when NOT_FOUND (and in dry runs). Each command is printed
    once, not on every poll."""
    argv = self.tpus(kind, "describe", name or self.name, *self.where, "--format=json")
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

  def up(self) -> list[dict] | None:
    """Creates the queued resource unless it (or its TPU VMs) exist, and waits until every
    TPU VM is READY; returns their descriptions."""
    args = self.args
    deadline = time.monotonic() + 60 * args.wait_minutes
    created, last = False, None
    while True:
      qr = self.describe("queued-resources")
      if qr is None:
        nodes = [self.describe("tpu-vm", n) for n in self.nodes]
        found = [n for n, node in zip(self.nodes, nodes) if node is not None]
        if found:  # TPU VMs made without a queued resource
          if len(found) < len(self.nodes):
            missing = [n for n in self.nodes if n not in found]
            raise LaunchError(f"of the {len(self.nodes)} slices' TPU VMs only "
                              f"{', '.join(found)} exist (no queued resource {self.name}; "
                              f"missing: {', '.join(missing)}): create the missing ones, or "
                              "delete these (--action down) and rerun to queue all together")
          if all([self.node_ready(n, node) for n, node in zip(self.nodes, nodes)]):
            self.run.note(f"reusing the TPU VM{'s' * (len(nodes) > 1)} {', '.join(self.nodes)}")
            self._described, self._queued = nodes, False
            return nodes
          state = "TPU VM " + self.node_states(nodes)
        elif created:
          raise LaunchError(f"the queued resource {self.name} disappeared while waiting for it")
        else:
          self.create()
          created = True
          if self.run.dry_run:
            vms = "TPU VM" if self.num_slices == 1 else f"{self.num_slices} TPU VMs"
            self.run.note(f"(then waits until the queued resource is ACTIVE and its {vms} "
                          f"READY, checking every {args.poll_seconds:g} s)")
            return None
          continue
      else:
        state = (qr.get("state") or {}).get("state", "?")
        if state == "ACTIVE":
          nodes = [self.describe("tpu-vm", n) for n in self.nodes]
          if all([node is not None and self.node_ready(n, node)
                  for n, node in zip(self.nodes, nodes)]):
            if last is None:
              self.run.note(f"reusing the ACTIVE queued resource {self.name}")
            self._described, self._queued = nodes, True
            return nodes
          state = "ACTIVE, TPU VM " + self.node_states(nodes)
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

  def node_states(self, nodes: list[dict | None]) -> str:
    """"READY" for one slice; "name-0 READY, name-1 CREATING" for several."""
    states = [node.get("state", "?") if node else "not listed yet" for node in nodes]
    if len(states) == 1:
      return states[0]
    return ", ".join(f"{n} {s}" for n, s in zip(self.nodes, states))

  def create(self) -> None:
    args = self.args
    accelerator = args.accelerator.replace("v5e-", "v5litepod-")
    # One request for all slices: provisioned together (or not at all), and the runtime joins
    # them (MEGASCALE_* in each TPU VM's metadata).
    naming = (["--node-id", self.name] if self.num_slices == 1 else
              ["--node-count", str(self.num_slices), "--node-prefix", self.name])
    self.run.run(self.tpus("queued-resources", "create", self.name, *naming,
                           *self.where, "--accelerator-type", accelerator, "--runtime-version",
                           args.runtime_version or TPUS[self.topo.generation].runtime_version)
                 + (["--spot"] if args.spot else []))

  def node_ready(self, name: str, node: dict) -> bool:
    """True when READY, False while it comes up; raises (one line) when it cannot be used."""
    state = node.get("state", "?")
    if state == "READY":
      return True
    if state in NODE_WAIT:
      return False
    hint = NODE_STOP.get(state, "rerun when it is READY, or delete it (--action down)")
    raise LaunchError(f"TPU VM {name} is {state}: {hint}")

  def ready_nodes(self) -> list[dict]:
    """Every slice's TPU VM description (as `up` left them, else asked now); all READY."""
    if self._described is None:
      nodes = []
      for name in self.nodes:
        node = self.describe("tpu-vm", name)
        if node is None:
          raise LaunchError(f"no TPU VM {name} in {self.args.zone}: run --action up first")
        if not self.node_ready(name, node):
          raise LaunchError(f"TPU VM {name} is {node.get('state')}: rerun --action up "
                            "to wait until it is READY")
        nodes.append(node)
      self._described = nodes
    return self._described

  def workers(self) -> list[int]:
    """Each slice's worker count: gcloud's (one network endpoint per worker VM) when it can
    be asked, else the table in launch/README.md."""
    if self.run.dry_run:
      return [self.topo.hosts] * self.num_slices
    counts = []
    for name, node in zip(self.nodes, self.ready_nodes()):
      count = len(node.get("networkEndpoints") or []) or self.topo.hosts
      if count != self.topo.hosts:
        self.run.note(f"gcloud lists {count} workers for {name} (the table says "
                      f"{self.topo.hosts} for {self.args.accelerator}); using {count}")
      counts.append(count)
    return counts

  def megascale_env(self) -> list[dict[str, str]]:
    """Per slice, the MEGASCALE_* variables the launcher must set: none for one slice or for
    the TPU VMs of a multislice queued resource (the runtime sets them); for slices made
    without one, slice 0's worker 0 as coordinator and each slice's index."""
    none = [{} for _ in self.nodes]
    if self.num_slices == 1:
      return none
    if self.run.dry_run:
      self.run.note(f"(the TPU VMs of the queued resource {self.name} get MEGASCALE_* from the "
                    "TPU runtime; slices made without one get them from the launcher)")
      return none
    if self._queued is None:
      self._queued = self.describe("queued-resources") is not None
    if self._queued:
      return none
    endpoints = self.ready_nodes()[0].get("networkEndpoints") or []
    if not endpoints or not endpoints[0].get("ipAddress"):
      raise LaunchError(f"gcloud lists no network endpoint for {self.nodes[0]}: cannot name "
                        "the MEGASCALE coordinator (slice 0, worker 0)")
    coordinator = f"{endpoints[0]['ipAddress']}:{MEGASCALE_PORT}"
    self.run.note(f"{', '.join(self.nodes)} belong to no queued resource: setting MEGASCALE_* "
                  f"(coordinator {coordinator}) on each slice")
    return [{"MEGASCALE_COORDINATOR_ADDRESS": coordinator,
             "MEGASCALE_NUM_SLICES": str(self.num_slices), "MEGASCALE_SLICE_ID": str(i),
             "MEGASCALE_PORT": str(MEGASCALE_PORT)} for i in range(self.num_slices)]

  # --------------------------------------------------------------------- install and train

  def prepare(self) -> None:
    """Copies the worker script to every worker of every slice and stops the previous run."""
    self.run.run_all([self.tpus("tpu-vm", "scp", os.path.join(REPO, "launch", "tpu_worker.sh"),
                                f"{node}:{WORKER_SCRIPT}", *self.where, "--worker=all")
                      for node in self.nodes])
    self.on_every_slice(f"bash ~/{WORKER_SCRIPT} stop {self.args.stop_grace_seconds:g}")

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
      self.run.run_all([self.tpus("tpu-vm", "scp", archive, f"{node}:jpeglm.tar.gz",
                                  *self.where, "--worker=all") for node in self.nodes])
      fetch = f"rm -rf {remote} && mkdir -p {remote} && tar -xzf $HOME/jpeglm.tar.gz -C {remote}"
    # uv brings its own CPython build: the images' python3 is 3.10 (v4) or undocumented.
    uv = ('export PATH="$HOME/.local/bin:$PATH" && { command -v uv > /dev/null || '
          f'curl -LsSf {UV_INSTALLER} | env UV_INSTALL_DIR="$HOME/.local/bin" '
          'UV_NO_MODIFY_PATH=1 sh; }')
    venv = (f"uv venv --python {PYTHON_VERSION} --python-preference only-managed "
            f"{remote}/.venv && uv pip install --quiet --python {remote}/.venv/bin/python "
            f"-e \"{remote}[tpu]\" && {remote}/.venv/bin/python --version")
    self.run.note(f"installing with Python {PYTHON_VERSION} (uv), not the image's python3")
    self.on_every_slice(f"{fetch} && {uv} && {venv}")

  def start(self, train_args: list[str]) -> None:
    """The same command on every worker of every slice (MEGASCALE_* before it where the
    launcher must set them)."""
    command = shlex.join([".venv/bin/jpeglm", *train_args])
    starts = []
    for node, env in zip(self.nodes, self.megascale_env()):
      prefix = shlex.join(["env", *(f"{k}={v}" for k, v in env.items())]) + " " if env else ""
      starts.append(self.ssh(node, "all", f"{prefix}bash ~/{WORKER_SCRIPT} start {command}"))
    self.run.run_all(starts)

  # ----------------------------------------------------------------------- logs, status

  def logs(self, workers: list[int]) -> None:
    where = "worker 0's" if self.num_slices == 1 else f"{self.nodes[0]} worker 0's"
    self.run.note(f"streaming {where} log until training ends (Ctrl-C stops only the "
                  "stream; --action logs reattaches)")
    self.run.run(self.ssh(self.nodes[0], 0, f"bash ~/{WORKER_SCRIPT} follow"), check=False)
    self.report(workers)

  def report(self, workers: list[int]) -> None:
    """Reads every worker's status on every slice (waiting up to --status-wait-seconds for
    runs still going); prints one line each; raises WorkersFailed unless all exited 0."""
    every = [(s, w) for s, count in enumerate(workers) for w in range(count)]
    label = ((lambda s, w: f"worker {w}") if self.num_slices == 1 else
             (lambda s, w: f"slice {s} worker {w}"))
    commands = {(s, w): self.ssh(self.nodes[s], w, f"bash ~/{WORKER_SCRIPT} status")
                for s, w in every}
    if self.run.dry_run:
      for argv in commands.values():
        self.run.show(argv)
      return
    deadline = time.monotonic() + self.args.status_wait_seconds
    pending, final = list(every), {}
    while pending:
      results = self.run.query_all([commands[k] for k in pending])
      still = []
      for k, result in zip(pending, results):
        lines = result.stdout.strip().splitlines()
        if result.returncode:
          err = (result.stderr.strip().splitlines() or ["no output"])[-1]
          status, tail = f"unreachable (gcloud exit {result.returncode}: {err})", []
        else:
          status, tail = (lines[0] if lines else "lost"), lines[1:]
        if status == "running" and time.monotonic() < deadline:
          still.append(k)
        final[k] = (status, tail)
      pending = still
      if pending:
        time.sleep(self.args.poll_seconds)
    failed = []
    for k in every:
      status, tail = final[k]
      print(f"{label(*k)}: {status}", flush=True)
      if status != "exit 0":
        failed.append(f"{label(*k)} {status}")
        for line in tail:
          print(f"  | {line}", flush=True)
    total = len(every)
    if failed:
      raise WorkersFailed(f"{len(failed)} of {total} workers failed: {', '.join(failed)} "
                          f"(logs: ~/jpeglm-train.log on each worker)")
    print(f"all {total} workers exited 0", flush=True)

  # -------------------------------------------------------------------------------- down

  def down(self) -> None:
    """Deletes the queued resource with its TPU VMs, or the TPU VMs made without one."""
    if self.run.dry_run or self.describe("queued-resources") is not None:
      self.run.run(self.tpus("queued-resources", "delete", self.name, *self.where, "--force",
                             "--quiet"))
      return
    found = [n for n in self.nodes if self.describe("tpu-vm", n) is not None]
    for node in found:
      self.run.run(self.tpus("tpu-vm", "delete", node, *self.where, "--quiet"))
    if not found:
      self.run.note(f"nothing to delete: no queued resource or TPU VM {', '.join(self.nodes)}")
