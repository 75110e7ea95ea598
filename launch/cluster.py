"""Cluster launchers behind `launch/tpu_pod.sh` and `launch/gpu.sh`.

  python launch/cluster.py tpu --name NAME --zone ZONE --accelerator v5p-32 \
      --config CFG --workdir gs://BUCKET/RUN [--action all|up|install|train|logs|down] \
      [--dry-run] [-- --config.k=v ...]
  python launch/cluster.py gpu --config CFG --workdir DIR --gpus 8 [--nodes 4] [--dry-run] \
      [-- --config.k=v ...]

Every command is printed (shell-quoted, one a line) before it runs; `--dry-run` only prints.
Both refuse, before anything runs, a config whose mesh cannot be laid out on the slice's or
the nodes' devices (one line on stderr, exit 2). See launch/README.md.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# gcloud runtime (VM image) per TPU generation.
RUNTIME_VERSIONS = {"v4": "tpu-ubuntu2204-base", "v5p": "v2-alpha-tpuv5",
                    "v5e": "v2-alpha-tpuv5-lite", "v6e": "v2-alpha-tpuv6e"}
REMOTE_DIR = "jpeglm"  # on each TPU worker, under $HOME
REMOTE_LOG = "jpeglm-train.log"
REMOTE_RC = "jpeglm-train.rc"


class LaunchError(Exception):
  pass


class Runner:
  """Prints each command; runs it unless dry-run."""

  def __init__(self, dry_run: bool):
    self.dry_run = dry_run

  def note(self, text: str) -> None:
    print(f"# {text}", flush=True)

  def run(self, argv: Sequence[str], check: bool = True) -> int:
    print(shlex.join(argv), flush=True)
    if self.dry_run:
      return 0
    code = subprocess.run(list(argv)).returncode
    if check and code:
      raise LaunchError(f"command failed ({code}): {shlex.join(argv)}")
    return code

  def succeeds(self, argv: Sequence[str]) -> bool:
    """A probe (does the TPU VM exist?): printed; run and answered only outside dry runs."""
    print(shlex.join(argv), flush=True)
    if self.dry_run:
      return False
    return subprocess.run(list(argv), capture_output=True).returncode == 0

  def run_parallel(self, commands: list[list[str]]) -> None:
    for argv in commands:
      print(shlex.join(argv), flush=True)
    if self.dry_run:
      return
    procs = [subprocess.Popen(argv) for argv in commands]
    codes = [p.wait() for p in procs]
    if any(codes):
      raise LaunchError(f"{sum(1 for c in codes if c)} of {len(codes)} commands failed")


def check_mesh(config_spec: str, overrides: Sequence[str], num_devices: int, where: str) -> None:
  """Raises LaunchError (one line) when the config's mesh does not fit `num_devices`."""
  from jpeglm.config_io import load_config
  from jpeglm.errors import JpeglmError
  from jpeglm.sharding import mesh_shape

  try:
    config = load_config(config_spec, overrides)
    mesh_shape(config.mesh, num_devices)
  except JpeglmError as e:
    raise LaunchError(f"{config_spec} cannot run on {where}: {e}") from None


def train_argv(jpeglm_bin: str, config: str, workdir: str, overrides: Sequence[str],
               distributed: bool) -> list[str]:
  argv = [jpeglm_bin, "train", "--config", config, "--workdir", workdir, *overrides]
  return argv + (["--distributed", "auto"] if distributed else [])


# ----------------------------------------------------------------------------------------- TPU

def tpu(args: argparse.Namespace, overrides: list[str]) -> None:
  from jpeglm.compile_check import parse_topology
  from jpeglm.errors import JpeglmError

  try:
    topo = parse_topology(args.accelerator)
  except JpeglmError as e:
    raise LaunchError(str(e)) from None
  accelerator = args.accelerator if not args.accelerator.startswith("v5e") else \
      args.accelerator.replace("v5e", "v5litepod")
  check_mesh(args.config, overrides, topo.devices,
             f"{args.accelerator} ({topo.devices} devices on {topo.hosts} hosts)")
  if topo.hosts > 1 and not args.workdir.startswith("gs://"):
    raise LaunchError(f"--workdir {args.workdir}: a {topo.hosts}-host slice needs a workdir "
                      "every worker sees, a gs:// path")
  run = Runner(args.dry_run)
  zone = ["--zone", args.zone] + (["--project", args.project] if args.project else [])
  tpus = ["gcloud", "compute", "tpus"]
  ssh = lambda worker, command: [*tpus, "tpu-vm", "ssh", args.name, *zone,
                                 f"--worker={worker}", "--command", command]
  actions = ["up", "install", "train", "logs"] if args.action == "all" else [args.action]
  run.note(f"{args.accelerator}: {topo.chips} chips, {topo.devices} JAX devices, "
           f"{topo.hosts} workers; actions: {', '.join(actions)}")

  if "up" in actions:
    if run.succeeds([*tpus, "tpu-vm", "describe", args.name, *zone, "--format=value(state)"]):
      run.note(f"reusing the existing TPU VM {args.name}")
    else:
      run.run([*tpus, "queued-resources", "create", args.name, "--node-id", args.name, *zone,
               "--accelerator-type", accelerator, "--runtime-version",
               args.runtime_version or RUNTIME_VERSIONS[topo.generation]]
              + (["--spot"] if args.spot else []))
      wait_active(run, [*tpus, "queued-resources", "describe", args.name, *zone,
                        "--format=value(state.state)"], args.wait_minutes)

  if "install" in actions:
    remote = f"$HOME/{REMOTE_DIR}"
    if args.git_url:
      fetch = (f"rm -rf {remote} && git clone --quiet {shlex.quote(args.git_url)} {remote} && "
               f"git -C {remote} checkout --quiet {shlex.quote(args.git_ref)}")
    else:
      archive = f"/tmp/jpeglm-{args.name}.tar.gz"
      run.note("copying the committed tree (git archive HEAD): commit local changes first")
      run.run(["git", "-C", REPO, "archive", "--format=tar.gz", "-o", archive, "HEAD"])
      run.run([*tpus, "tpu-vm", "scp", archive, f"{args.name}:jpeglm.tar.gz", *zone,
               "--worker=all"])
      fetch = f"rm -rf {remote} && mkdir -p {remote} && tar -xzf $HOME/jpeglm.tar.gz -C {remote}"
    install = (f"{fetch} && python3 -m venv {remote}/.venv && "
               f"{remote}/.venv/bin/pip install --quiet -e \"{remote}[tpu]\"")
    run.run(ssh("all", install))

  if "train" in actions:
    argv = train_argv("jpeglm", args.config, args.workdir, overrides,
                      distributed=True)
    # Detached (nohup), so a dropped ssh session does not stop training; the exit status
    # lands in ~/jpeglm-train.rc for `--action logs`.
    inner = (f"cd ~/{REMOTE_DIR} && {shlex.join(['.venv/bin/jpeglm', *argv[1:]])} "
             f"> ~/{REMOTE_LOG} 2>&1; echo $? > ~/{REMOTE_RC}")
    command = f"rm -f ~/{REMOTE_RC} && (nohup sh -c {shlex.quote(inner)} > /dev/null 2>&1 &)"
    run.run_parallel([ssh(str(w), command) for w in range(topo.hosts)])

  if "logs" in actions:
    follow = (f"tail -n +1 -F ~/{REMOTE_LOG} & tailer=$!; "
              f"while [ ! -f ~/{REMOTE_RC} ]; do sleep 20; done; sleep 2; kill $tailer; "
              f"exit $(cat ~/{REMOTE_RC})")
    run.note("streaming worker 0's log until training exits (Ctrl-C stops only the stream)")
    run.run(ssh("0", follow))

  if "down" in actions or args.teardown:
    run.run([*tpus, "queued-resources", "delete", args.name, *zone, "--force", "--quiet"])


def wait_active(run: Runner, describe: list[str], minutes: float) -> None:
  print(shlex.join(describe), flush=True)
  if run.dry_run:
    run.note("(repeated every 30 s until the state is ACTIVE)")
    return
  deadline = time.time() + 60 * minutes
  while time.time() < deadline:
    state = subprocess.run(describe, capture_output=True, text=True).stdout.strip()
    if state == "ACTIVE":
      return
    if state in ("FAILED", "SUSPENDED"):
      raise LaunchError(f"queued resource is {state}: {shlex.join(describe)}")
    print(f"# state {state or '?'}; waiting", flush=True)
    time.sleep(30)
  raise LaunchError(f"not ACTIVE after {minutes} minutes; rerun to keep waiting (it is reused)")


# ----------------------------------------------------------------------------------------- GPU

def gpu(args: argparse.Namespace, overrides: list[str]) -> None:
  devices = args.nodes * args.gpus
  check_mesh(args.config, overrides, devices,
             f"{args.nodes} node(s) x {args.gpus} GPUs ({devices} devices)")
  run = Runner(args.dry_run)
  visible = ",".join(str(i) for i in range(args.gpus))
  if args.nodes == 1:
    run.note(f"one process sees all {args.gpus} GPUs")
    run.run(["env", f"CUDA_VISIBLE_DEVICES={visible}",
             *train_argv(args.jpeglm_bin, args.config, args.workdir, overrides, False)])
    return
  if not args.workdir.startswith("gs://") and not os.path.isabs(args.workdir):
    raise LaunchError(f"--workdir {args.workdir}: multi-node runs need a shared path "
                      "(absolute, on a shared filesystem) or gs://")
  # One task per node, each seeing its node's GPUs; `--distributed auto` lets JAX read the
  # coordinator, process count and id from the SLURM environment (srun sets it).
  srun = ["srun", f"--nodes={args.nodes}", "--ntasks-per-node=1",
          f"--gpus-per-node={args.gpus}", f"--cpus-per-task={args.cpus_per_task}",
          "--kill-on-bad-exit=1", f"--job-name={args.job_name}"]
  srun += [f"--partition={args.partition}"] if args.partition else []
  srun += [f"--time={args.time}"] if args.time else []
  srun += [f"--account={args.account}"] if args.account else []
  run.note(f"{args.nodes} processes (one per node) x {args.gpus} GPUs via SLURM")
  run.run([*srun, *train_argv(args.jpeglm_bin, args.config, args.workdir, overrides, True)])


# ------------------------------------------------------------------------------------ command

def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog="launch/cluster.py", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="kind", required=True)
  t = sub.add_parser("tpu", prog="launch/tpu_pod.sh",
                     description="Run `jpeglm train` on a Cloud TPU VM slice (queued resources).")
  t.add_argument("--name", required=True, help="TPU VM / queued resource name (reused if it exists)")
  t.add_argument("--zone", required=True)
  t.add_argument("--project", default=None)
  t.add_argument("--accelerator", required=True, help="v5p-32, v4-64, v5e-256, v6e-16, ...")
  t.add_argument("--runtime-version", default=None, help="default: per generation")
  t.add_argument("--spot", action="store_true")
  t.add_argument("--config", required=True)
  t.add_argument("--workdir", required=True, help="gs://BUCKET/RUN (all workers share it)")
  t.add_argument("--action", default="all", choices=("all", "up", "install", "train", "logs",
                                                     "down"),
                 help="all = up, install, train, logs")
  t.add_argument("--teardown", action="store_true", help="delete the slice at the end")
  t.add_argument("--git-url", default=None, help="install by cloning this (default: copy HEAD)")
  t.add_argument("--git-ref", default="main")
  t.add_argument("--wait-minutes", type=float, default=120)
  t.add_argument("--dry-run", action="store_true", help="print every command, run none")
  g = sub.add_parser("gpu", prog="launch/gpu.sh",
                     description="Run `jpeglm train` on one GPU node, or several via SLURM srun.")
  g.add_argument("--config", required=True)
  g.add_argument("--workdir", required=True)
  g.add_argument("--gpus", type=int, required=True, help="GPUs per node")
  g.add_argument("--nodes", type=int, default=1)
  g.add_argument("--partition", default=None)
  g.add_argument("--time", default=None)
  g.add_argument("--account", default=None)
  g.add_argument("--cpus-per-task", type=int, default=16)
  g.add_argument("--job-name", default="jpeglm")
  g.add_argument("--jpeglm-bin", default="jpeglm", help="the jpeglm executable on the nodes")
  g.add_argument("--dry-run", action="store_true", help="print every command, run none")
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  overrides = [a for a in argv if a.startswith("--config.")]
  rest = [a for a in argv if not a.startswith("--config.") and a != "--"]
  args = build_parser().parse_args(rest)
  if args.kind == "gpu" and (args.gpus < 1 or args.nodes < 1):
    print("launch: error: --gpus and --nodes must be >= 1", file=sys.stderr)
    return 2
  try:
    (tpu if args.kind == "tpu" else gpu)(args, overrides)
  except LaunchError as e:
    print(f"launch: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
