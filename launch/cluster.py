"""Cluster launchers behind `launch/tpu_pod.sh` and `launch/gpu.sh`.

  python launch/cluster.py tpu --name NAME --zone ZONE --accelerator v5p-32 [--num-slices N] \
      --config CFG --workdir gs://BUCKET/RUN [--action all|up,install,train,logs|down] \
      [--dry-run] [-- --config.k=v ...]
  python launch/cluster.py gpu --config CFG --workdir DIR --gpus 8 [--nodes 4] [--dry-run] \
      [-- --config.k=v ...]

Every command is printed (shell-quoted, one a line) before it runs; `--dry-run` only prints.
Both refuse, before anything runs, a config whose mesh cannot be laid out on the slice's or
the nodes' devices (one line on stderr, exit 2), and start training with `--expect-devices`,
so a run that sees fewer devices stops before any compute. Exit status: 0 when every worker
exited 0, 1 when training failed on some worker, 2 when the launch could not go on.
See launch/README.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from launch.runner import LaunchError, Runner  # noqa: E402

TPU_ACTIONS = ("up", "install", "train", "logs", "down")


def check_mesh(config_spec: str, overrides: Sequence[str], num_devices: int, where: str) -> None:
  """Raises LaunchError (one line) when the config's mesh does not fit `num_devices`."""
  from jpeglm.config_io import load_config
  from jpeglm.errors import JpeglmError
  from jpeglm.model.sharding import mesh_shape

  try:
    config = load_config(config_spec, overrides)
    mesh_shape(config.mesh, num_devices)
  except JpeglmError as e:
    raise LaunchError(f"{config_spec} cannot run on {where}: {e}") from None


DCN_OVERRIDE = "--config.mesh.dcn_data="


def slice_overrides(config_spec: str, overrides: Sequence[str], num_slices: int,
                    per_slice_devices: int, where: str) -> list[str]:
  """The overrides `num_slices` slices add (`--config.mesh.dcn_data=N`: data parallelism
  across slices), after checking the config's mesh fits each slice. Raises LaunchError (one
  line) when it does not, or when `mesh.dcn_data` is given and is not the slice count."""
  from jpeglm.config_io import load_config
  from jpeglm.errors import JpeglmError
  from jpeglm.model.sharding import mesh_shape

  given = [o for o in overrides if o.startswith(DCN_OVERRIDE)]
  try:
    config = load_config(config_spec, overrides)
    mesh = config.mesh.to_dict()
    value = int(mesh.get("dcn_data", 1))
    if (given and value != num_slices) or value not in (1, num_slices):
      raise LaunchError(f"mesh.dcn_data={value} but --num-slices {num_slices}: mesh.dcn_data is "
                        "the number of slices (leave it out; the launcher sets it)")
    mesh["dcn_data"] = num_slices
    mesh_shape(mesh, per_slice_devices * num_slices)
  except JpeglmError as e:
    raise LaunchError(f"{config_spec} cannot run on {where}: {e}") from None
  return [f"{DCN_OVERRIDE}{num_slices}"] if num_slices > 1 and not given else []


def train_args(config: str, workdir: str, overrides: Sequence[str]) -> list[str]:
  return ["train", "--config", config, "--workdir", workdir, *overrides]


def parse_actions(text: str) -> list[str]:
  actions = ["up", "install", "train", "logs"] if text == "all" else text.split(",")
  unknown = [a for a in actions if a not in TPU_ACTIONS]
  if unknown:
    raise argparse.ArgumentTypeError(f"unknown action {unknown[0]!r}: use all or a comma list "
                                     f"of {', '.join(TPU_ACTIONS)}")
  return actions


def tpu(args: argparse.Namespace, overrides: list[str]) -> None:
  from jpeglm.fit.compile_check import parse_topology
  from jpeglm.errors import JpeglmError
  from launch.tpu_slice import Slice

  try:
    topo = parse_topology(args.accelerator)
  except JpeglmError as e:
    raise LaunchError(str(e)) from None
  slices = args.num_slices
  devices, hosts = topo.devices * slices, topo.hosts * slices
  where = f"{args.accelerator} ({topo.devices} devices on {topo.hosts} hosts)"
  if slices > 1:
    where = f"{slices} x {where}"
  overrides = overrides + slice_overrides(args.config, overrides, slices, topo.devices, where)
  if hosts > 1 and not args.workdir.startswith("gs://"):
    raise LaunchError(f"--workdir {args.workdir}: {hosts} hosts need a workdir every worker "
                      "sees, a gs:// path")
  run = Runner(args.dry_run)
  tpu_slice = Slice(args, topo, run)
  actions = args.action
  if slices == 1:
    run.note(f"{args.accelerator}: {topo.chips} chips, {topo.devices} JAX devices, "
             f"{topo.hosts} workers; actions: {', '.join(actions)}")
  else:
    run.note(f"{slices} x {args.accelerator} ({', '.join(tpu_slice.nodes)}): "
             f"{slices * topo.chips} chips, {devices} JAX devices, {hosts} workers "
             f"({topo.hosts} per slice), data parallel across slices; "
             f"actions: {', '.join(actions)}")
  interrupted = False
  try:
    if "up" in actions:
      tpu_slice.up()
    if {"install", "train", "logs"} & set(actions):
      workers = tpu_slice.workers()
    if "install" in actions or "train" in actions:
      tpu_slice.prepare()
    if "install" in actions:
      tpu_slice.install()
    if "train" in actions:
      tpu_slice.start(train_args(args.config, args.workdir, overrides)
                      + ["--distributed", "auto", "--expect-devices", str(devices)])
    if "logs" in actions:
      tpu_slice.logs(workers)
  except KeyboardInterrupt:
    interrupted = True
    raise
  finally:
    if ("down" in actions or args.teardown) and not interrupted:
      tpu_slice.down()


def gpu(args: argparse.Namespace, overrides: list[str]) -> None:
  from launch import gpu_nodes

  devices = args.nodes * args.gpus
  check_mesh(args.config, overrides, devices,
             f"{args.nodes} node(s) x {args.gpus} GPUs ({devices} devices)")
  gpu_nodes.launch(args, train_args(args.config, args.workdir, overrides), Runner(args.dry_run))


def positive(text: str) -> int:
  if not text.isdigit() or int(text) < 1:
    raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
  return int(text)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="launch/cluster.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="kind", required=True)
  t = sub.add_parser("tpu", prog="launch/tpu_pod.sh",
                     description="Run `jpeglm train` on Cloud TPU VM slices (queued resources).")
  t.add_argument("--name", required=True,
                 help="queued resource and TPU VM name (reused); several slices: NAME-0 ...")
  t.add_argument("--zone", required=True)
  t.add_argument("--project", default=None)
  t.add_argument("--accelerator", required=True, help="v5p-32, v4-64, v5e-256, v6e-16, ...")
  t.add_argument("--num-slices", type=positive, default=1,
                 help="slices of --accelerator joined over the data-centre network (one "
                      "queued resource; data parallel across them, mesh.dcn_data)")
  t.add_argument("--runtime-version", default=None, help="default: per generation")
  t.add_argument("--spot", action="store_true")
  t.add_argument("--config", required=True)
  t.add_argument("--workdir", required=True, help="gs://BUCKET/RUN (all workers share it)")
  t.add_argument("--action", default="all", type=parse_actions,
                 help="all (= up,install,train,logs), or a comma list of up, install, train, "
                      "logs, down")
  t.add_argument("--teardown", action="store_true", help="delete the slice at the end")
  t.add_argument("--git-url", default=None, help="install by cloning this (default: copy HEAD)")
  t.add_argument("--git-ref", default="main")
  t.add_argument("--wait-minutes", type=float, default=24 * 60,
                 help="how long `up` waits for the queued resource (a rerun keeps waiting)")
  t.add_argument("--poll-seconds", type=float, default=30)
  t.add_argument("--stop-grace-seconds", type=float, default=120,
                 help="a previous run gets this long after SIGTERM (it saves) before SIGKILL")
  t.add_argument("--status-wait-seconds", type=float, default=600,
                 help="after worker 0 ends, how long to wait for the other workers to end")
  t.add_argument("--dry-run", action="store_true", help="print every command, run none")
  g = sub.add_parser("gpu", prog="launch/gpu.sh",
                     description="Run `jpeglm train` on one GPU node, or several via SLURM srun "
                                 "(one task per GPU).")
  g.add_argument("--config", required=True)
  g.add_argument("--workdir", required=True)
  g.add_argument("--gpus", type=int, required=True, help="GPUs per node")
  g.add_argument("--nodes", type=int, default=1)
  g.add_argument("--partition", default=None)
  g.add_argument("--time", default=None)
  g.add_argument("--account", default=None)
  g.add_argument("--cpus-per-node", type=int, default=64,
                 help="CPU cores per node, shared among its GPUs' tasks (default 64)")
  g.add_argument("--cpus-per-task", type=int, default=None,
                 help="default: --cpus-per-node / --gpus")
  g.add_argument("--job-name", default="jpeglm")
  g.add_argument("--jpeglm-bin", default="jpeglm", help="the jpeglm executable on the nodes")
  g.add_argument("--dry-run", action="store_true", help="print every command, run none")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  from jpeglm.config_io import split_overrides

  argv = list(sys.argv[1:] if argv is None else argv)
  overrides, rest = split_overrides(argv)
  args = build_parser().parse_args([a for a in rest if a != "--"])
  if args.kind == "gpu" and (args.gpus < 1 or args.nodes < 1):
    print("launch: error: --gpus and --nodes must be >= 1", file=sys.stderr)
    return 2
  try:
    (tpu if args.kind == "tpu" else gpu)(args, overrides)
  except LaunchError as e:
    print(f"launch: error: {e}", file=sys.stderr)
    return e.exit_code
  except KeyboardInterrupt:
    print("launch: interrupted (training on the workers goes on; --action logs reattaches)",
          file=sys.stderr)
    return 130
  return 0


if __name__ == "__main__":
  sys.exit(main())
