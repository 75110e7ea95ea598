"""GPUs for `launch/gpu.sh`: one node (one process sees all its GPUs), or several under SLURM
with ONE TASK PER GPU.

Why one task per GPU: `jax.distributed.initialize()` reads SLURM's environment and, on GPUs,
sets `local_device_ids=[SLURM_LOCALID]` (jax/_src/clusters/cluster.py): each process drives
one GPU. With one task per node every process would see only GPU 0 (4 devices for 4 nodes x
8 GPUs). `--gpu-bind=none` keeps all of a node's GPUs visible to each task, so local id i
picks GPU i even where the site binds GPUs to tasks by default. The run is started with
`--expect-devices NODES*GPUS`: it prints what JAX found and stops before any compute if the
count differs.
"""

from __future__ import annotations

import os

from launch.runner import LaunchError, Runner


def srun_argv(args) -> list[str]:
  cpus = args.cpus_per_task or max(1, args.cpus_per_node // args.gpus)
  argv = ["srun", f"--nodes={args.nodes}", f"--ntasks-per-node={args.gpus}",
          f"--gpus-per-node={args.gpus}", "--gpu-bind=none", f"--cpus-per-task={cpus}",
          "--kill-on-bad-exit=1", f"--job-name={args.job_name}"]
  argv += [f"--partition={args.partition}"] if args.partition else []
  argv += [f"--time={args.time}"] if args.time else []
  argv += [f"--account={args.account}"] if args.account else []
  return argv


def launch(args, train: list[str], run: Runner) -> None:
  """`train`: the `train --config ... --workdir ... [overrides]` arguments of jpeglm."""
  devices = args.nodes * args.gpus
  expect = ["--expect-devices", str(devices)]
  if args.nodes == 1:
    run.note(f"one process sees all {args.gpus} GPUs")
    visible = ",".join(str(i) for i in range(args.gpus))
    run.run(["env", f"CUDA_VISIBLE_DEVICES={visible}", args.jpeglm_bin, *train, *expect])
    return
  if not args.workdir.startswith("gs://") and not os.path.isabs(args.workdir):
    raise LaunchError(f"--workdir {args.workdir}: multi-node runs need a shared path "
                      "(absolute, on a shared filesystem) or gs://")
  run.note(f"{devices} processes ({args.nodes} nodes x {args.gpus} tasks, one per GPU) via "
           "SLURM; JAX reads the coordinator and process ids from srun's environment")
  run.run([*srun_argv(args), args.jpeglm_bin, *train, "--distributed", "auto", *expect])
