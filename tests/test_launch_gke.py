"""launch/gke.sh: the JobSet manifests for TPU slices, multislice and a GPU pool (selectors,
resources, env) validated against the JobSet CRD's schema (tests/data, two releases); a fake
kubectl (tests/fakes/kubectl) for apply, status, logs, down and the one-line errors; and the
pods' environment fed to JAX's own GKE cluster detection and our distributed setup, giving
the hybrid mesh with the slices outermost on `data`."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import subprocess
import sys

import jsonschema
import numpy as np
import pytest
import yaml

from jpeglm.config_io import load_config, split_overrides
from jpeglm.model import sharding
from jpeglm.runtime import distributed
from tests.launch_helpers import CONFIG_7B, FAKES, launch
from tests.train_helpers import REPO

sys.path.insert(0, REPO)
from launch import gke, gke_manifest, tpu_slice  # noqa: E402

DATA = os.path.join(REPO, "tests", "data")
SCHEMAS = {"v0.12.0": "jobset_v1alpha2_schema.json", "v0.2.0": "jobset_v1alpha2_schema_v0.2.0.json"}
COMPLETION = "batch.kubernetes.io/job-completion-index"
BASE = ["--name", "jp", "--config", CONFIG_7B, "--workdir", "gs://b/run", "--image", "img:1"]


def strict(schema):
  """The schema with unknown fields refused, as pruning and strict field validation do."""
  if isinstance(schema, list):
    return [strict(s) for s in schema]
  if not isinstance(schema, dict):
    return schema
  out = {k: (v if k == "properties" else strict(v)) for k, v in schema.items()}
  if "properties" in schema:
    out["properties"] = {k: strict(v) for k, v in schema["properties"].items()}
    if ("additionalProperties" not in schema
        and not schema.get("x-kubernetes-preserve-unknown-fields")):
      out["additionalProperties"] = False
  return out


@pytest.fixture(scope="module")
def validators():
  out = {}
  for release, name in SCHEMAS.items():
    with open(os.path.join(DATA, name)) as f:
      out[release] = jsonschema.Draft7Validator(strict(json.load(f)))
  return out


@pytest.fixture
def cwd(monkeypatch):
  monkeypatch.chdir(REPO)


def dry_run(capsys, *args: str) -> dict:
  code = gke.main([*BASE, *args, "--dry-run"])
  out, err = capsys.readouterr()
  assert code == 0, err
  assert err == ""
  return yaml.safe_load(out)


def check_schemas(validators, manifest: dict) -> None:
  for release, validator in validators.items():
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(manifest)]
    assert errors == [], f"JobSet {release}: {errors}"
  meta = manifest["metadata"]
  assert re.fullmatch(r"[a-z]([-a-z0-9]*[a-z0-9])?", meta["name"])
  assert all(isinstance(v, str) for part in ("labels", "annotations")
             for v in meta.get(part, {}).values())


def pod_template(manifest: dict) -> dict:
  [rjob] = manifest["spec"]["replicatedJobs"]
  return rjob["template"]["spec"]["template"]["spec"]


def env_of(container: dict) -> dict:
  return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


# Per GKE's "Plan TPUs in GKE" / "Deploy TPU Multislices in GKE": label value, topology, chips
# per host (google.com/tpu), hosts per slice.
TPU_CASES = [("v5p-16", 1, "tpu-v5p-slice", "2x2x2", 4, 2),
             ("v5p-16", 2, "tpu-v5p-slice", "2x2x2", 4, 2),
             ("v6e-64", 1, "tpu-v6e-slice", "8x8", 4, 16)]


@pytest.mark.parametrize("accelerator, slices, label, topology, chips, hosts", TPU_CASES)
def test_tpu_manifest_selects_the_slice(capsys, cwd, validators, accelerator, slices, label,
                                        topology, chips, hosts):
  m = dry_run(capsys, "--accelerator", accelerator, "--num-slices", str(slices),
              "--config.train.steps=10")
  check_schemas(validators, m)
  assert (m["apiVersion"], m["kind"]) == ("jobset.x-k8s.io/v1alpha2", "JobSet")
  assert m["metadata"]["annotations"] == {
      "alpha.jobset.sigs.k8s.io/exclusive-topology": "cloud.google.com/gke-nodepool"}
  assert "labels" not in m["metadata"]  # no --queue
  spec = m["spec"]
  assert spec["failurePolicy"] == {"maxRestarts": 10}
  assert spec["network"] == {"enableDNSHostnames": True, "subdomain": "jp"}
  [rjob] = spec["replicatedJobs"]
  assert (rjob["name"], rjob["replicas"]) == ("slice", slices)
  job = rjob["template"]["spec"]
  assert (job["completionMode"], job["parallelism"], job["completions"], job["backoffLimit"]) \
      == ("Indexed", hosts, hosts, 0)
  pod = job["template"]["spec"]
  assert (pod["hostNetwork"], pod["dnsPolicy"], pod["restartPolicy"]) == (
      True, "ClusterFirstWithHostNet", "Never")
  assert pod["nodeSelector"] == {"cloud.google.com/gke-tpu-accelerator": label,
                                 "cloud.google.com/gke-tpu-topology": topology}
  [container] = pod["containers"]
  assert container["resources"] == {"requests": {"google.com/tpu": chips},
                                    "limits": {"google.com/tpu": chips}}
  assert "securityContext" not in container and container["image"] == "img:1"
  devices = slices * hosts * chips
  dcn = [f"--config.mesh.dcn_data={slices}"] if slices > 1 else []
  assert container["command"] == ["jpeglm", "train", "--config", CONFIG_7B, "--workdir",
                                  "gs://b/run", "--config.train.steps=10", *dcn, "--distributed",
                                  "auto", "--expect-devices", str(devices)]
  env = env_of(container)
  if slices == 1:
    assert env == {}  # GKE's webhook gives TPU_WORKER_ID/HOSTNAMES; JAX needs nothing more
  else:
    assert env == {
        "MEGASCALE_COORDINATOR_ADDRESS": "jp-slice-0-0.jp:8080",
        "MEGASCALE_NUM_SLICES": "2",
        "MEGASCALE_SLICE_ID": {"fieldRef": {
            "fieldPath": "metadata.labels['jobset.sigs.k8s.io/job-index']"}},
        "MEGASCALE_PORT": "8080"}
    assert {"containerPort": 8080} in container["ports"]


def test_gpu_manifest_gives_every_gpu_and_the_headless_coordinator(capsys, cwd, validators):
  m = dry_run(capsys, "--accelerator", "h100-80gb", "--nodes", "4", "--config.mesh.tensor=8")
  check_schemas(validators, m)
  [rjob] = m["spec"]["replicatedJobs"]
  job = rjob["template"]["spec"]
  assert (rjob["replicas"], job["parallelism"], job["completions"], job["completionMode"]) == (
      1, 4, 4, "Indexed")
  pod = job["template"]["spec"]
  assert "hostNetwork" not in pod
  assert pod["nodeSelector"] == {"cloud.google.com/gke-accelerator": "nvidia-h100-80gb"}
  [container] = pod["containers"]
  assert container["resources"]["limits"] == {"nvidia.com/gpu": 8}
  assert env_of(container) == {
      "JAX_LOCAL_DEVICE_IDS": "0,1,2,3,4,5,6,7",
      "JPEGLM_COORDINATOR": "jp-slice-0-0.jp:8482",
      "JPEGLM_NUM_PROCESSES": "4",
      "JPEGLM_PROCESS_ID": {"fieldRef": {
          "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}}
  assert {"name": "dshm", "mountPath": "/dev/shm"} in container["volumeMounts"]
  # jpeglm's own variables join the processes: no --distributed auto.
  assert container["command"][-3:] == ["--config.mesh.tensor=8", "--expect-devices", "32"]


def test_queue_label_and_options(capsys, cwd, validators):
  m = dry_run(capsys, "--accelerator", "v5p-16", "--queue", "team-q", "--max-restarts", "3",
              "--privileged")
  check_schemas(validators, m)
  assert m["metadata"]["labels"] == {"kueue.x-k8s.io/queue-name": "team-q"}
  assert m["spec"]["failurePolicy"]["maxRestarts"] == 3
  assert pod_template(m)["containers"][0]["securityContext"] == {"privileged": True}


@pytest.mark.parametrize("accelerator, topology, per_host, hosts", [
    ("v4-8", "2x2x1", 4, 1), ("v4-64", "2x4x4", 4, 8), ("v5p-32", "2x2x4", 4, 4),
    ("v5e-8", "2x4", 8, 1), ("v5litepod-16", "4x4", 4, 4), ("v6e-256", "16x16", 4, 64)])
def test_topologies_in_gke_spelling(accelerator, topology, per_host, hosts):
  from jpeglm.fit.compile_check import parse_topology

  pool = gke_manifest.tpu_pool(parse_topology(accelerator), 1)
  assert pool.node_selector["cloud.google.com/gke-tpu-topology"] == topology
  assert (pool.per_host, pool.hosts) == (per_host, hosts)


@pytest.mark.parametrize("args, words", [
    (["--accelerator", "v5p-16", "--config.mesh.fsdp=64"], "needs 64 devices"),
    (["--accelerator", "v5p-8", "--num-slices", "2"], "single-host slice"),
    (["--accelerator", "h100-80gb", "--num-slices", "2"], "--nodes N"),
    (["--accelerator", "v5p-16", "--nodes", "2"], "--num-slices N"),
    (["--accelerator", "v7x-16"], "h100-80gb"),
    (["--accelerator", "v6e-256", "--num-slices", "4", "--name", "x" * 56], "at most 63"),
    (["--accelerator", "v5p-16", "--name", "Bad_Name"], "DNS label"),
    (["--accelerator", "v5p-16", "--workdir", "/tmp/run"], "gs://"),
])
def test_refusals_are_one_line(capsys, cwd, args, words):
  assert gke.main([*BASE, *args, "--dry-run"]) == 2
  out, err = capsys.readouterr()
  assert out == "" and len(err.strip().splitlines()) == 1, err
  assert err.startswith("launch: error:") and words in err


# ------------------------------------------------------------------------- fake kubectl


@pytest.fixture
def cluster(tmp_path, monkeypatch, cwd):
  monkeypatch.setenv("FAKE_KUBECTL_DIR", str(tmp_path))
  monkeypatch.setenv("PATH", os.pathsep.join([FAKES, os.path.dirname(sys.executable),
                                              os.environ["PATH"]]))
  return tmp_path


def calls(root) -> list[list[str]]:
  path = root / "calls.jsonl"
  return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def kubectl_pods(root, name: str = "jp") -> list[dict]:
  out = subprocess.run([os.path.join(FAKES, "kubectl"), "get", "pods", "-l",
                        f"jobset.sigs.k8s.io/jobset-name={name}", "-o", "json"],
                       capture_output=True, text=True, check=True).stdout
  return json.loads(out)["items"]


def test_up_applies_the_dry_run_manifest_after_checking_the_queue(capfd, cluster):
  args = [*BASE, "--accelerator", "v5p-16", "--num-slices", "2", "--queue", "q"]
  (cluster / "localqueues").write_text("q\n")
  assert gke.main([*args, "--dry-run"]) == 0
  manifest = capfd.readouterr().out
  assert gke.main(args) == 0
  out = capfd.readouterr().out
  assert (cluster / "applied.yaml").read_text() == manifest
  assert [c[:3] for c in calls(cluster)] == [["get", "jobset", "jp"], ["get", "localqueue", "q"],
                                            ["apply", "-f", "-"]]
  assert "kubectl apply -f -" in out and "jobset.jobset.x-k8s.io/jp created" in out
  # A second launch does not touch the running JobSet.
  assert gke.main(args) == 2
  err = capfd.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and "JobSet jp already exists (running" in err
  assert [c[0] for c in calls(cluster)].count("apply") == 1


def test_status_logs_down(capfd, cluster):
  assert gke.main([*BASE, "--accelerator", "v5p-16", "--num-slices", "2", "--namespace",
                   "ml"]) == 0
  (cluster / "pod_phases").write_text("Running\nRunning\nPending ImagePullBackOff\nRunning\n")
  capfd.readouterr()
  assert gke.main(["--name", "jp", "--namespace", "ml", "--action", "status"]) == 0
  lines = [line for line in capfd.readouterr().out.splitlines() if not line.startswith("kubectl")]
  assert lines == ["jobset jp: running (restarts 0 of 10)", "slice 0: 2/2 Running",
                   "slice 1: 1 Pending (ImagePullBackOff), 1 Running of 2"]
  assert calls(cluster)[-1] == ["get", "pods", "-l", "jobset.sigs.k8s.io/jobset-name=jp", "-o",
                                "json", "--namespace", "ml"]

  assert gke.main(["--name", "jp", "--namespace", "ml", "--action", "logs"]) == 0
  out = capfd.readouterr().out
  assert "kubectl logs -f jp-slice-0-0-x00 -c jpeglm --namespace ml" in out
  assert "fake log of jp-slice-0-0-x00" in out

  assert gke.main(["--name", "jp", "--namespace", "ml", "--action", "down"]) == 0
  assert 'jobset.jobset.x-k8s.io "jp" deleted' in capfd.readouterr().out
  assert gke.main(["--name", "jp", "--action", "down"]) == 0
  assert "nothing to delete" in capfd.readouterr().out


@pytest.mark.parametrize("state, action, words", [
    ("no_cluster", "up", "kubectl reaches no cluster"),
    ("no_cluster", "status", "get-credentials"),
    ("no_jobset_crd", "up", "no JobSet CRD"),
    ("no_jobset_crd", "down", "no JobSet CRD"),
    ("no_kueue", "up", "no Kueue"),
    ("", "up", "no Kueue LocalQueue q in the current namespace"),
    ("", "status", "no JobSet jp"),
    ("", "logs", "no pod for worker 0"),
])
def test_missing_cluster_crd_or_queue_answers_in_one_line(capfd, cluster, state, action, words):
  if state:
    (cluster / state).write_text("")
  up = ["--accelerator", "v5p-16", "--queue", "q"] if action == "up" else []
  assert gke.main([*BASE, *up, "--action", action]) == 2
  err = capfd.readouterr().err.strip()
  assert len(err.splitlines()) == 1, err
  assert err.startswith("launch: error:") and words in err
  assert "apply" not in [c[0] for c in calls(cluster)]


def test_gke_sh_dry_run_prints_only_the_manifest():
  result = launch("gke.sh", *BASE, "--accelerator", "v6e-64", "--dry-run")
  assert result.returncode == 0 and result.stderr == "", result.stderr
  assert yaml.safe_load(result.stdout)["kind"] == "JobSet"


# -------------------------------------------------------- the pods' env, as JAX reads it


def resolved_env(pod: dict, pods: list[dict]) -> dict[str, str]:
  """The container's env as the kubelet gives it (literal values and the downward API), plus
  what GKE's TPU webhook adds to the pods of an Indexed Job that ask for google.com/tpu:
  TPU_WORKER_ID (the completion index) and TPU_WORKER_HOSTNAMES (the Job's pods, in order)."""
  meta, spec = pod["metadata"], pod["spec"]
  [container] = spec["containers"]
  env = {}
  for var in container.get("env", []):
    if "value" in var:
      env[var["name"]] = var["value"]
      continue
    kind, key = re.fullmatch(r"metadata\.(labels|annotations)\['(.+)'\]",
                             var["valueFrom"]["fieldRef"]["fieldPath"]).groups()
    env[var["name"]] = meta[kind][key]
  if "google.com/tpu" in container["resources"]["limits"]:
    job = meta["labels"]["jobset.sigs.k8s.io/job-index"]
    same_job = sorted((p for p in pods if p["metadata"]["labels"]["jobset.sigs.k8s.io/job-index"]
                       == job), key=lambda p: int(p["metadata"]["annotations"][COMPLETION]))
    env["TPU_WORKER_ID"] = meta["annotations"][COMPLETION]
    env["TPU_WORKER_HOSTNAMES"] = ",".join(f"{p['spec']['hostname']}.{p['spec']['subdomain']}"
                                           for p in same_job)
  return env


@dataclasses.dataclass(frozen=True)
class FakeChip:
  """A TPU chip as the runtime describes it to JAX: its process and its slice."""
  id: int
  process_index: int
  slice_index: int
  platform: str = "cpu"  # no physical TPU coordinates to lay out
  device_kind: str = "fake TPU"


def joined(monkeypatch, env: dict, args) -> dict:
  """Runs our distributed setup in `env`, with jax.distributed.initialize replaced by JAX's
  own cluster detection on a GKE TPU VM; returns what initialize would have been given."""
  import jax
  from jax._src import clusters
  from jax._src.clusters import cloud_tpu_cluster, cluster

  got, asked = {}, []

  def initialize(coordinator_address=None, num_processes=None, process_id=None):
    if coordinator_address is None:  # --distributed auto
      coordinator_address, num_processes, process_id, _ = (
          clusters.ClusterEnv.auto_detect_unset_distributed_params(None, None, None, None,
                                                                   None, 1))
    got.update(coordinator=coordinator_address, num_processes=num_processes,
               process_id=process_id, metadata_asked=sorted(set(asked)))

  with monkeypatch.context() as m:
    for key in [k for k in os.environ if k.startswith(("MEGASCALE_", "TPU_", "JPEGLM_",
                                                         "SLURM_", "OMPI_",
                                                         "KUBERNETES_"))]:
      m.delenv(key)
    for key, value in env.items():
      m.setenv(key, value)
    m.setattr(cloud_tpu_cluster, "running_in_cloud_tpu_vm", True)
    m.setattr(cluster, "running_in_cloud_tpu_vm", True)
    # No metadata server and no DNS here. JAX asks the metadata's tpu-env for a MEGASCALE_*
    # variable the environment lacks; one slice's holds none. Several slices must not ask.
    m.setattr(cloud_tpu_cluster.GceTpuCluster, "is_env_present", classmethod(lambda c: False))
    m.setattr(cloud_tpu_cluster, "get_tpu_env_value_from_metadata",
              lambda key: asked.append(key))
    m.setattr(cloud_tpu_cluster.BaseTpuCluster, "wait_for_coordinator",
              classmethod(lambda c, address, timeout: None))
    m.setattr(jax.distributed, "initialize", initialize)
    distributed._join(args)
  return got


def train_args(container: dict):
  """The container's `jpeglm train` flags as jpeglm's own parser reads them."""
  import argparse

  parser = argparse.ArgumentParser()
  distributed.add_arguments(parser)
  parser.add_argument("--config")
  parser.add_argument("--workdir")
  overrides, rest = split_overrides(container["command"][2:])
  return parser.parse_args(rest), overrides


@pytest.mark.parametrize("slices", [1, 2])
def test_every_tpu_pod_joins_and_the_mesh_puts_slices_outermost_on_data(monkeypatch, cluster,
                                                                         slices):
  assert gke.main([*BASE, "--accelerator", "v5p-16", "--num-slices", str(slices)]) == 0
  pods = kubectl_pods(cluster)
  assert len(pods) == 2 * slices
  chips, seen = [], {}
  for pod in pods:
    env = resolved_env(pod, pods)
    args, overrides = train_args(pod["spec"]["containers"][0])
    got = joined(monkeypatch, env, args)
    slice_id = int(env.get("MEGASCALE_SLICE_ID", 0))
    host = int(env["TPU_WORKER_ID"])
    assert got["num_processes"] == 2 * slices
    assert got["coordinator"] == "jp-slice-0-0.jp:8482"  # slice 0's worker 0, JAX's port
    assert got["process_id"] == slice_id * 2 + host  # JAX numbers slice by slice
    assert got["metadata_asked"] == ([] if slices > 1 else [
        "MEGASCALE_COORDINATOR_ADDRESS", "MEGASCALE_NUM_SLICES", "MEGASCALE_SLICE_ID"])
    seen[got["process_id"]] = (slice_id, host)
    chips += [FakeChip(len(chips), got["process_id"], slice_id) for _ in range(4)]
  assert sorted(seen) == list(range(2 * slices))
  assert len(chips) == args.expect_devices == 8 * slices
  if slices == 1:
    return
  config = load_config(args.config, overrides)
  assert config.mesh.dcn_data == 2
  mesh = sharding.make_mesh(config.mesh, chips[::-1])  # whatever order the runtime lists them
  assert dict(mesh.shape) == {"data": 2, "fsdp": 8, "context": 1, "tensor": 1}
  slice_of = np.vectorize(lambda d: d.slice_index)(mesh.devices)
  process_of = np.vectorize(lambda d: d.process_index)(mesh.devices)
  assert (slice_of[0] == 0).all() and (slice_of[1] == 1).all()  # slices outermost on data
  assert set(process_of[0].ravel()) == {0, 1} and set(process_of[1].ravel()) == {2, 3}


def test_every_gpu_pod_joins_as_one_process_with_all_its_gpus(monkeypatch, cluster):
  assert gke.main([*BASE, "--accelerator", "h100-80gb", "--nodes", "4"]) == 0
  got, pods = [], kubectl_pods(cluster)
  for pod in pods:
    env = resolved_env(pod, pods)
    assert env["JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3,4,5,6,7"
    got.append(joined(monkeypatch, env, train_args(pod["spec"]["containers"][0])[0]))
  assert [g["process_id"] for g in got] == [0, 1, 2, 3]
  assert {(g["coordinator"], g["num_processes"]) for g in got} == {("jp-slice-0-0.jp:8482", 4)}


# ---------------------------------------------------------------------------- the image


def test_dockerfile_installs_the_tpu_extra_on_the_tested_python():
  with open(os.path.join(REPO, "launch", "Dockerfile")) as f:
    text = f.read()
  version = re.escape(tpu_slice.PYTHON_VERSION)
  assert re.search(rf"^ARG PYTHON_VERSION={version}$", text, re.MULTILINE)
  assert re.search(r"^ARG EXTRAS=tpu,gcs$", text, re.MULTILINE)
  assert 'pip install --no-cache-dir ".[${EXTRAS}]"' in text
