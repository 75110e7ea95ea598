"""`launch/gke.sh`: `jpeglm train` on GKE as a JobSet (queued by Kueue with --queue).

  launch/gke.sh --name NAME --accelerator v5p-16 [--num-slices N] --config CFG \
      --workdir gs://BUCKET/RUN --image IMAGE [--queue Q] [--dry-run] [-- --config.k=v ...]
  launch/gke.sh --name NAME --accelerator h100-80gb --nodes 4 --config CFG ...   # GPU pools
  launch/gke.sh --name NAME --action status|logs|down

`up` (the default) writes the JobSet for the slice(s) and applies it with `kubectl apply -f -`;
`--dry-run` prints only the manifest (YAML) on stdout. Before anything is applied, a config whose
mesh does not fit the devices is refused with one line, as the other launchers do. Exit status:
0 done, 2 the launch could not go on (one line on stderr). See launch/README.md, "GKE".
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from launch import gke_manifest  # noqa: E402
from launch.cluster import positive  # noqa: E402
from launch.runner import LaunchError, Runner  # noqa: E402

ACTIONS = ("up", "status", "logs", "down")


def plan(args: argparse.Namespace, overrides: list[str]) -> tuple[gke_manifest.Pool, list[str]]:
  """The machines and the container's command; LaunchError (one line) when they do not fit."""
  from jpeglm.fit.chips import GPU_NODES
  from launch.cluster import check_mesh, slice_overrides, train_args

  if not args.workdir.startswith("gs://"):
    raise LaunchError(f"--workdir {args.workdir}: pods keep nothing when they end; use a gs:// "
                      "path every pod can write")
  if args.accelerator in GPU_NODES:
    if args.num_slices > 1:
      raise LaunchError("--num-slices is for TPU slices; GPU node pools take --nodes N")
    pool = gke_manifest.gpu_pool(args.accelerator, args.nodes)
    check_mesh(args.config, overrides, pool.devices,
               f"{args.nodes} node(s) x {pool.per_host} GPUs ({pool.devices} devices)")
    # More than one node joins through JPEGLM_* (gke_manifest.gpu_env), not JAX's detection.
    extra = []
  else:
    if args.nodes > 1:
      raise LaunchError("--nodes is for GPU node pools; TPU slices take --num-slices N")
    pool = gke_manifest.tpu_pool(tpu_topology(args.accelerator, GPU_NODES), args.num_slices)
    if pool.slices > 1 and pool.hosts == 1:
      raise LaunchError(f"{args.accelerator} is a single-host slice: GKE runs multislice only on "
                        "multi-host TPU slice node pools")
    where = f"{args.accelerator} ({pool.hosts * pool.per_host} devices on {pool.hosts} hosts)"
    if pool.slices > 1:
      where = f"{pool.slices} x {where}"
    overrides = overrides + slice_overrides(args.config, overrides, pool.slices,
                                            pool.hosts * pool.per_host, where)
    extra = ["--distributed", "auto"] if pool.slices * pool.hosts > 1 else []
  problem = gke_manifest.name_problem(args.name, pool)
  if problem:
    raise LaunchError(problem)
  command = [args.jpeglm_bin, *train_args(args.config, args.workdir, overrides), *extra,
             "--expect-devices", str(pool.devices)]
  return pool, command


def tpu_topology(accelerator: str, gpu_nodes: dict):
  from jpeglm.errors import JpeglmError
  from jpeglm.fit.compile_check import parse_topology

  try:
    return parse_topology(accelerator)
  except JpeglmError as e:
    raise LaunchError(f"{e} (GPU node pools: {', '.join(sorted(gpu_nodes))})") from None


def up(args: argparse.Namespace, overrides: list[str]) -> None:
  import yaml  # PyYAML: installed with flax and ml-collections

  from launch.gke_kubectl import Kubectl

  pool, command = plan(args, overrides)
  manifest = gke_manifest.jobset(args.name, pool, args.image, command, queue=args.queue,
                                 max_restarts=args.max_restarts,
                                 grace_seconds=args.grace_seconds, privileged=args.privileged)
  text = yaml.safe_dump(manifest, sort_keys=False)
  if args.dry_run:
    print(text, end="", flush=True)
    return
  run = Runner(dry_run=False)
  kind = "TPU chips" if pool.tpu else "GPUs"
  run.note(f"JobSet {args.name}: {pool.slices} x {pool.hosts} pods of {pool.per_host} "
           f"{kind} ({args.accelerator}), {pool.devices} devices"
           + (f", queue {args.queue}" if args.queue else ""))
  Kubectl(run, args.namespace).up(text, args.name, args.queue)
  again = f"launch/gke.sh --name {args.name}" + (
      f" --namespace {args.namespace}" if args.namespace else "")
  run.note(f"follow it: {again} --action status | --action logs; stop it: --action down")


def build_parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="launch/gke.sh", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--name", required=True, help="the JobSet (its pods: NAME-slice-S-H)")
  p.add_argument("--action", choices=ACTIONS, default="up")
  p.add_argument("--accelerator",
                 help="TPU slice (v5p-16, v4-64, v5e-256, v6e-64, ...) or GPU node pool "
                      "(h100-80gb, h100-mega-80gb, h200-141gb, a100-80gb)")
  p.add_argument("--num-slices", type=positive, default=1,
                 help="TPU slices joined over the data-centre network (mesh.dcn_data)")
  p.add_argument("--nodes", type=positive, default=1, help="GPU node pools: nodes, one pod each")
  p.add_argument("--config")
  p.add_argument("--workdir", help="gs://BUCKET/RUN (every pod writes there)")
  p.add_argument("--image", help="the image launch/Dockerfile builds, pushed where GKE pulls")
  p.add_argument("--queue", default=None, help="Kueue LocalQueue (label kueue.x-k8s.io/queue-name)")
  p.add_argument("--namespace", default=None, help="default: kubectl's current namespace")
  p.add_argument("--max-restarts", type=int, default=10,
                 help="JobSet failurePolicy.maxRestarts: whole-JobSet restarts after a failed "
                      "or preempted pod (each resumes from the last checkpoint)")
  p.add_argument("--grace-seconds", type=int, default=120,
                 help="SIGTERM to SIGKILL (training saves a checkpoint on SIGTERM)")
  p.add_argument("--privileged", action="store_true",
                 help="privileged TPU containers, for clusters that give TPUs only to those")
  p.add_argument("--jpeglm-bin", default="jpeglm", help="the jpeglm executable in the image")
  p.add_argument("--dry-run", action="store_true",
                 help="up: print only the manifest; other actions: print the kubectl commands")
  return p


def main(argv: Sequence[str] | None = None) -> int:
  from jpeglm.config_io import split_overrides
  from launch.gke_kubectl import Kubectl

  argv = list(sys.argv[1:] if argv is None else argv)
  overrides, rest = split_overrides(argv)
  parser = build_parser()
  args = parser.parse_args([a for a in rest if a != "--"])
  if args.action == "up":
    missing = [f"--{k}" for k in ("accelerator", "config", "workdir", "image")
               if not getattr(args, k)]
    if missing:
      parser.error(f"--action up needs {', '.join(missing)}")
  try:
    if args.action == "up":
      up(args, overrides)
      return 0
    kubectl = Kubectl(Runner(args.dry_run), args.namespace)
    if args.action == "status" and not args.dry_run:
      kubectl.status(args.name)
    elif args.action == "status":
      kubectl.run.show(kubectl.argv("get", "jobset", args.name, "-o", "json"))
      kubectl.run.show(kubectl.argv("get", "pods", "-l",
                                    f"{gke_manifest.JOBSET_NAME_LABEL}={args.name}", "-o", "json"))
    elif args.action == "logs":
      return 1 if kubectl.logs(args.name) else 0
    else:
      kubectl.down(args.name)
  except LaunchError as e:
    print(f"launch: error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print("launch: interrupted (the JobSet goes on; --action logs reattaches)", file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
