"""kubectl for `launch/gke.sh`: apply the JobSet, summarise its pods per slice, follow worker 0,
delete it. Each reads kubectl's JSON; a missing cluster, JobSet CRD, Kueue or queue becomes one
line (LaunchError). Every command is printed before it runs, as the other launchers do."""

from __future__ import annotations

import collections
import json
import shlex
import subprocess

from launch.gke_manifest import COMPLETION_INDEX, CONTAINER, JOB_INDEX_LABEL, JOBSET_NAME_LABEL
from launch.runner import LaunchError, Runner

GET_CREDENTIALS = "gcloud container clusters get-credentials CLUSTER --location LOCATION"
UNREACHABLE = ("unable to connect to the server", "did you specify the right host or port",
               "no configuration has been provided", "couldn't get current server api group",
               "dial tcp", "connection refused", "i/o timeout")
NO_KIND = ("no matches for kind", "doesn't have a resource type",
           "could not find the requested resource")


def explain(argv: list[str], result: subprocess.CompletedProcess) -> str:
  """One line for a failed kubectl call."""
  err = result.stderr.strip()
  low = err.lower()
  last = (err.splitlines() or ["no output"])[-1]
  if any(s in low for s in UNREACHABLE):
    return f"kubectl reaches no cluster ({last}): point it at one with `{GET_CREDENTIALS}`"
  if any(s in low for s in NO_KIND) and "localqueue" in low:
    return ("the cluster has no Kueue (no LocalQueue kind): install Kueue "
            "(https://kueue.sigs.k8s.io/docs/installation/) or leave out --queue")
  if any(s in low for s in NO_KIND) and "jobset" in low:
    return ("the cluster has no JobSet CRD (jobset.x-k8s.io/v1alpha2): install JobSet "
            "(https://jobset.sigs.k8s.io/docs/installation/)")
  return f"{shlex.join(argv)} failed ({result.returncode}): {last}"


def not_found(result: subprocess.CompletedProcess) -> bool:
  return "notfound" in result.stderr.lower().replace(" ", "")


class Kubectl:
  def __init__(self, run: Runner, namespace: str | None):
    self.run = run
    self.namespace = namespace
    self.where = ["--namespace", namespace] if namespace else []

  def argv(self, *words: str) -> list[str]:
    return ["kubectl", *words, *self.where]

  def call(self, argv: list[str], stdin: str | None = None) -> subprocess.CompletedProcess:
    self.run.show(argv)
    try:
      return subprocess.run(argv, input=stdin, capture_output=True, text=True, check=False)
    except FileNotFoundError:
      raise LaunchError("kubectl is not on PATH: install it (gcloud components install "
                        f"kubectl), then `{GET_CREDENTIALS}`") from None

  def get(self, kind: str, name: str) -> dict | None:
    """`kubectl get KIND NAME -o json`; None when there is no such object."""
    argv = self.argv("get", kind, name, "-o", "json")
    result = self.call(argv)
    if result.returncode == 0:
      return json.loads(result.stdout)
    if not_found(result) and not any(s in result.stderr.lower() for s in NO_KIND):
      return None
    raise LaunchError(explain(argv, result))

  def pods(self, name: str) -> list[dict]:
    argv = self.argv("get", "pods", "-l", f"{JOBSET_NAME_LABEL}={name}", "-o", "json")
    result = self.call(argv)
    if result.returncode:
      raise LaunchError(explain(argv, result))
    return json.loads(result.stdout).get("items", [])

  def namespace_text(self) -> str:
    return f"namespace {self.namespace}" if self.namespace else "the current namespace"

  # --------------------------------------------------------------------------------- up

  def up(self, manifest: str, name: str, queue: str | None) -> None:
    """Applies the JobSet unless one of that name exists (its spec cannot change in place)."""
    existing = self.get("jobset", name)
    if existing is not None:
      raise LaunchError(f"JobSet {name} already exists ({jobset_state(existing)}): "
                        "--action status or logs follow it; --action down deletes it (a new "
                        "launch resumes from the workdir's checkpoint)")
    if queue and self.get("localqueue", queue) is None:
      raise LaunchError(f"no Kueue LocalQueue {queue} in {self.namespace_text()}: "
                        "`kubectl get localqueues --all-namespaces` lists them")
    argv = self.argv("apply", "-f", "-")
    result = self.call(argv, stdin=manifest)
    if result.returncode:
      raise LaunchError(explain(argv, result))
    print(result.stdout.strip(), flush=True)

  # ----------------------------------------------------------------------------- status

  def status(self, name: str) -> None:
    """One line for the JobSet, then one per slice."""
    jobset = self.get("jobset", name)
    if jobset is None:
      raise LaunchError(f"no JobSet {name} in {self.namespace_text()}")
    print(f"jobset {name}: {jobset_state(jobset)}", flush=True)
    replicated = jobset["spec"]["replicatedJobs"][0]
    hosts = replicated["template"]["spec"].get("parallelism", 1)
    by_slice = collections.defaultdict(list)
    for pod in self.pods(name):
      by_slice[int(pod["metadata"].get("labels", {}).get(JOB_INDEX_LABEL, 0))].append(pod)
    for s in range(replicated.get("replicas", 1)):
      print(f"slice {s}: {slice_summary(by_slice[s], hosts)}", flush=True)

  # ------------------------------------------------------------------------------- logs

  def logs(self, name: str) -> int:
    """Follows worker 0 of slice 0 (its newest pod, after restarts)."""
    if self.run.dry_run:
      self.run.show(self.argv("get", "pods", "-l", f"{JOBSET_NAME_LABEL}={name}", "-o", "json"))
      self.run.show(self.argv("logs", "-f", "WORKER-0-POD", "-c", CONTAINER))
      return 0
    workers = [p for p in self.pods(name) if worker_index(p) == (0, 0)]
    if not workers:
      raise LaunchError(f"JobSet {name} has no pod for worker 0 yet: --action status says why")
    pod = max(workers, key=lambda p: p["metadata"].get("creationTimestamp", ""))
    pod_name, phase = pod["metadata"]["name"], pod.get("status", {}).get("phase", "?")
    if phase == "Pending":
      raise LaunchError(f"worker 0 ({pod_name}) is Pending{reason_text(pod)}: --action status "
                        "shows every slice; rerun --action logs once it runs")
    return self.run.run(self.argv("logs", "-f", pod_name, "-c", CONTAINER), check=False)

  # ------------------------------------------------------------------------------- down

  def down(self, name: str) -> None:
    argv = self.argv("delete", "jobset", name)
    if self.run.dry_run:
      self.run.show(argv)
      return
    result = self.call(argv)
    if result.returncode and not_found(result) and "jobset" in result.stderr.lower():
      self.run.note(f"no JobSet {name} in {self.namespace_text()}: nothing to delete")
      return
    if result.returncode:
      raise LaunchError(explain(argv, result))
    print(result.stdout.strip(), flush=True)


def jobset_state(jobset: dict) -> str:
  """"running (restarts 0 of 10)", "suspended (queued in Kueue queue q)", "Completed", ..."""
  status = jobset.get("status") or {}
  true = [c for c in status.get("conditions") or [] if c.get("status") == "True"]
  final = [c for c in true if c.get("type") in ("Completed", "Failed")]
  restarts = (f"restarts {status.get('restarts', 0)} of "
              f"{jobset['spec'].get('failurePolicy', {}).get('maxRestarts', 0)}")
  if final:
    c = final[-1]
    detail = f": {c['message']}" if c.get("message") else ""
    return f"{c['type']}{detail} ({restarts})"
  if jobset["spec"].get("suspend") or any(c.get("type") == "Suspended" for c in true):
    queue = jobset["metadata"].get("labels", {}).get("kueue.x-k8s.io/queue-name")
    return f"suspended ({f'queued in Kueue queue {queue}' if queue else 'spec.suspend'})"
  return f"running ({restarts})"


def worker_index(pod: dict) -> tuple[int, int]:
  """(slice, host) of a pod, from JobSet's label and the Job's completion index."""
  meta = pod["metadata"]
  labels, notes = meta.get("labels", {}), meta.get("annotations", {})
  host = notes.get(COMPLETION_INDEX, labels.get(COMPLETION_INDEX, -1))
  return int(labels.get(JOB_INDEX_LABEL, -1)), int(host)


def reason_text(pod: dict) -> str:
  """" (ImagePullBackOff)" or " (Unschedulable: 0/3 nodes ...)" for a pod that waits."""
  status = pod.get("status", {})
  for c in status.get("containerStatuses") or []:
    waiting = (c.get("state") or {}).get("waiting")
    if waiting and waiting.get("reason"):
      return f" ({waiting['reason']})"
  for c in status.get("conditions") or []:
    if c.get("type") == "PodScheduled" and c.get("status") == "False":
      message = (c.get("message") or "").splitlines()[0][:120] if c.get("message") else ""
      return f" ({c.get('reason', 'not scheduled')}{': ' + message if message else ''})"
  return ""


def slice_summary(pods: list[dict], hosts: int) -> str:
  """"2/2 Running", or "1 Running, 1 Pending (Unschedulable: ...) of 2"."""
  phases = collections.Counter(p.get("status", {}).get("phase", "Unknown") for p in pods)
  if not pods:
    return f"no pods yet (of {hosts})"
  if phases == {"Running": hosts}:
    return f"{hosts}/{hosts} Running"
  waiting = next((reason_text(p) for p in pods if p.get("status", {}).get("phase") == "Pending"),
                 "")
  parts = [f"{n} {phase}{waiting if phase == 'Pending' else ''}"
           for phase, n in sorted(phases.items())]
  return f"{', '.join(parts)} of {hosts}"
