"""The JobSet manifest `launch/gke.sh` applies: one replicated Job `slice` whose replicas are the
TPU slices (or one group of GPU nodes), one pod per host.

What each setting is for (sources in launch/README.md, "GKE"):
  - `completionMode: Indexed`, `parallelism = completions = hosts`, `backoffLimit: 0`: a pod per
    TPU host with a stable index; one failed pod fails its Job, and JobSet's
    `failurePolicy.maxRestarts` then recreates every Job, so the run resumes from the workdir's
    last checkpoint on all slices at once.
  - `network`: JobSet's headless service NAME (the pods' `subdomain`) gives pod i of slice j the
    name NAME-slice-j-i.NAME. GKE's TPU webhook fills TPU_WORKER_ID and
    TPU_WORKER_HOSTNAMES from it for an Indexed Job that asks for google.com/tpu; JAX's GKE
    cluster detection reads those two.
  - `hostNetwork` + `dnsPolicy: ClusterFirstWithHostNet`: the TPU runtime talks over the
    host's network, and the pod still resolves the service names.
  - the exclusive-topology annotation: each slice's Job lands on a node pool of its own.
  - multislice: MEGASCALE_* set here from JobSet's own pod labels, so they do not depend on a
    webhook's version.

Only fields of the first v1alpha2 JobSet release (v0.2.0) are used: a newer field would be
dropped or refused by an older controller (tests check both schemas).
"""

from __future__ import annotations

import dataclasses
import re

from jpeglm.fit.chips import GPU_NODES, TPUS

JOB = "slice"  # the replicated Job's name: pods NAME-slice-<slice>-<host>
CONTAINER = "jpeglm"
MEGASCALE_PORT = 8080  # the port the GKE multislice examples expose for it
JAX_COORDINATOR_PORT = 8482  # JAX's own default for TPU clusters; used for the GPU variant
TPU_PORTS = (8471, MEGASCALE_PORT)  # 8471: the TPU runtime between the hosts of a slice
GKE_TPU_LABEL = "cloud.google.com/gke-tpu-accelerator"
GKE_TOPOLOGY_LABEL = "cloud.google.com/gke-tpu-topology"
GKE_GPU_LABEL = "cloud.google.com/gke-accelerator"
EXCLUSIVE = "alpha.jobset.sigs.k8s.io/exclusive-topology"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
JOBSET_NAME_LABEL = "jobset.sigs.k8s.io/jobset-name"
JOB_INDEX_LABEL = "jobset.sigs.k8s.io/job-index"
COMPLETION_INDEX = "batch.kubernetes.io/job-completion-index"  # a pod annotation
NAME_RE = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


@dataclasses.dataclass(frozen=True)
class Pool:
  """What the manifest needs to know about the machines: `slices` groups of `hosts` pods,
  each with `per_host` accelerators."""
  accelerator: str  # as given: v5p-16, h100-80gb
  slices: int
  hosts: int  # pods per slice
  per_host: int  # chips (google.com/tpu) or GPUs (nvidia.com/gpu) per pod
  node_selector: dict[str, str]
  tpu: bool

  @property
  def devices(self) -> int:
    return self.slices * self.hosts * self.per_host


def gke_topology(jax_name: str) -> str:
  """GKE's spelling of a slice's chip grid: ascending, a 1 last (v5:4x2x2 -> 2x2x4,
  v4:2x2x1 -> 2x2x1, v6e:8x8 -> 8x8)."""
  dims = sorted(int(d) for d in jax_name.split(":")[1].split("x"))
  if dims[0] == 1 and len(dims) == 3:
    dims = dims[1:] + [1]
  return "x".join(map(str, dims))


def tpu_pool(topo, slices: int) -> Pool:
  """`topo`: compile_check.parse_topology's Topology of one slice."""
  selector = {GKE_TPU_LABEL: TPUS[topo.generation].gke_accelerator,
              GKE_TOPOLOGY_LABEL: gke_topology(topo.jax_name)}
  return Pool(topo.name, slices, topo.hosts, topo.chips // topo.hosts, selector, tpu=True)


def gpu_pool(accelerator: str, nodes: int) -> Pool:
  node = GPU_NODES[accelerator]
  return Pool(accelerator, 1, nodes, node.gpus, {GKE_GPU_LABEL: node.gke_accelerator},
              tpu=False)


def hostname(name: str, slice_index: int, host: int) -> str:
  """Pod `host` of slice `slice_index` under JobSet's headless service `name`."""
  return f"{name}-{JOB}-{slice_index}-{host}.{name}"


def field(path: str) -> dict:
  """An env value read from the pod itself (downward API)."""
  return {"valueFrom": {"fieldRef": {"fieldPath": path}}}


def tpu_env(name: str, pool: Pool) -> list[dict]:
  """MEGASCALE_* for several slices (the names the TPU runtime and JAX read); one slice needs
  none: JAX finds its peers from TPU_WORKER_HOSTNAMES."""
  if pool.slices == 1:
    return []
  return [
      {"name": "MEGASCALE_COORDINATOR_ADDRESS",
       "value": f"{hostname(name, 0, 0)}:{MEGASCALE_PORT}"},
      {"name": "MEGASCALE_NUM_SLICES", "value": str(pool.slices)},
      {"name": "MEGASCALE_SLICE_ID", **field(f"metadata.labels['{JOB_INDEX_LABEL}']")},
      {"name": "MEGASCALE_PORT", "value": str(MEGASCALE_PORT)},
  ]


def gpu_env(name: str, pool: Pool) -> list[dict]:
  """jpeglm's own multi-process variables (jpeglm/runtime/distributed.py): process i is the
  pod of completion index i, process 0 the coordinator. JAX_LOCAL_DEVICE_IDS gives each
  process all of its node's GPUs whatever cluster JAX detects."""
  env = [{"name": "JAX_LOCAL_DEVICE_IDS", "value": ",".join(map(str, range(pool.per_host)))}]
  if pool.hosts == 1:
    return env
  return env + [
      {"name": "JPEGLM_COORDINATOR", "value": f"{hostname(name, 0, 0)}:{JAX_COORDINATOR_PORT}"},
      {"name": "JPEGLM_NUM_PROCESSES", "value": str(pool.hosts)},
      {"name": "JPEGLM_PROCESS_ID", **field(f"metadata.annotations['{COMPLETION_INDEX}']")},
  ]


def pod_spec(name: str, pool: Pool, image: str, command: list[str], grace_seconds: int,
             privileged: bool) -> dict:
  resource = "google.com/tpu" if pool.tpu else "nvidia.com/gpu"
  container = {
      "name": CONTAINER, "image": image, "command": command,
      "env": tpu_env(name, pool) if pool.tpu else gpu_env(name, pool),
      "resources": {"requests": {resource: pool.per_host}, "limits": {resource: pool.per_host}},
  }
  spec = {"hostNetwork": True, "dnsPolicy": "ClusterFirstWithHostNet"} if pool.tpu else {}
  spec.update(restartPolicy="Never", terminationGracePeriodSeconds=grace_seconds,
              nodeSelector=dict(pool.node_selector), containers=[container])
  if pool.tpu:
    container["ports"] = [{"containerPort": port} for port in TPU_PORTS]
    if privileged:  # GKE's examples set it; Autopilot refuses it, so it is asked for
      container["securityContext"] = {"privileged": True}
  else:  # NCCL needs more shared memory than a container's default 64 MB
    container["volumeMounts"] = [{"name": "dshm", "mountPath": "/dev/shm"}]
    spec["volumes"] = [{"name": "dshm", "emptyDir": {"medium": "Memory"}}]
  return spec


def jobset(name: str, pool: Pool, image: str, command: list[str], *, queue: str | None = None,
           max_restarts: int = 10, grace_seconds: int = 120, privileged: bool = False) -> dict:
  """The JobSet, as a dict ready for YAML."""
  metadata = {"name": name, "annotations": {EXCLUSIVE: "cloud.google.com/gke-nodepool"}}
  if queue:
    metadata["labels"] = {QUEUE_LABEL: queue}
  job = {"parallelism": pool.hosts, "completions": pool.hosts, "completionMode": "Indexed",
         "backoffLimit": 0,
         "template": {"spec": pod_spec(name, pool, image, command, grace_seconds, privileged)}}
  return {
      "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet", "metadata": metadata,
      "spec": {"failurePolicy": {"maxRestarts": max_restarts},
               "network": {"enableDNSHostnames": True, "subdomain": name},
               "replicatedJobs": [{"name": JOB, "replicas": pool.slices,
                                   "template": {"spec": job}}]},
  }


def name_problem(name: str, pool: Pool) -> str | None:
  """Why `name` cannot name the JobSet (the pods' hostnames are DNS labels), or None."""
  if not NAME_RE.fullmatch(name):
    return (f"--name {name!r}: use lower-case letters, digits and '-' (a DNS label, starting "
            "with a letter)")
  longest = hostname(name, pool.slices - 1, pool.hosts - 1).split(".")[0]
  if len(longest) > 63:
    return (f"--name {name!r} is too long: the pod hostname {longest} has {len(longest)} "
            "characters, at most 63")
  return None
