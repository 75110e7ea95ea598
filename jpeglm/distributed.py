"""Joining JAX's multi-controller runtime (`jax.distributed`) before any other JAX call.

How a process learns it is one of many, in order:
  - flags `--coordinator HOST:PORT --num-processes N --process-id I` (local multi-process
    runs, `launch/local.sh`);
  - the same as environment variables JPEGLM_COORDINATOR, JPEGLM_NUM_PROCESSES,
    JPEGLM_PROCESS_ID;
  - `--distributed auto` / JPEGLM_DISTRIBUTED=auto: JAX's own cluster detection (TPU pod
    slices, SLURM, GKE, ...), used by `launch/tpu_pod.sh` and `launch/gpu.sh`.
Nothing set means a single process.
"""

from __future__ import annotations

import os

from jpeglm.errors import ConfigError


def add_arguments(parser) -> None:
  group = parser.add_argument_group("multi-process (jax.distributed)")
  group.add_argument("--distributed", choices=("off", "auto"), default=None,
                     help="auto: let JAX detect the cluster (TPU pod, SLURM)")
  group.add_argument("--coordinator", default=None, help="HOST:PORT of process 0")
  group.add_argument("--num-processes", type=int, default=None)
  group.add_argument("--process-id", type=int, default=None)


def initialize(args=None) -> None:
  """Calls jax.distributed.initialize when asked to by flags or environment."""
  get = lambda name, env: getattr(args, name, None) if getattr(args, name, None) is not None \
      else os.environ.get(env)
  mode = get("distributed", "JPEGLM_DISTRIBUTED") or "off"
  coordinator = get("coordinator", "JPEGLM_COORDINATOR")
  num = get("num_processes", "JPEGLM_NUM_PROCESSES")
  pid = get("process_id", "JPEGLM_PROCESS_ID")
  import jax

  if mode == "auto":
    jax.distributed.initialize()
    return
  if coordinator is None and num is None and pid is None:
    return
  if coordinator is None or num is None or pid is None:
    raise ConfigError("multi-process runs need all of --coordinator, --num-processes and "
                      "--process-id (or JPEGLM_COORDINATOR/NUM_PROCESSES/PROCESS_ID)")
  num, pid = int(num), int(pid)
  if not 0 <= pid < num:
    raise ConfigError(f"--process-id {pid} is not in [0, {num})")
  jax.distributed.initialize(coordinator_address=coordinator, num_processes=num, process_id=pid)
