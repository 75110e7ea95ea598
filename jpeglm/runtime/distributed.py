"""Joining JAX's multi-controller runtime (`jax.distributed`) before any other JAX call, and
checking that the run sees the devices it was launched for.

How a process learns it is one of many, in order:
  - flags `--coordinator HOST:PORT --num-processes N --process-id I` (local multi-process
    runs, `launch/local.sh`);
  - the same as environment variables JPEGLM_COORDINATOR, JPEGLM_NUM_PROCESSES,
    JPEGLM_PROCESS_ID;
  - `--distributed auto` / JPEGLM_DISTRIBUTED=auto: JAX's own cluster detection (TPU pod
    slices, SLURM, GKE, ...), used by `launch/tpu_pod.sh` and `launch/gpu.sh`.
Nothing set means a single process.

`--expect-devices N` (or JPEGLM_EXPECT_DEVICES): every process prints the device count it
sees and stops, before any compute, unless JAX sees exactly N devices in all. The launchers
pass it: a mesh with `fsdp=-1` would otherwise quietly shrink to whatever JAX found (under
SLURM with one task per node, JAX gives each process only one GPU).
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
  group.add_argument("--expect-devices", type=int, default=None,
                     help="stop before any compute unless JAX sees exactly this many devices "
                          "in all processes together (the launchers pass it)")


def _get(args, name: str, env: str):
  value = getattr(args, name, None)
  return value if value is not None else os.environ.get(env)


def initialize(args=None) -> None:
  """Calls jax.distributed.initialize when asked to by flags or environment, then checks the
  device count when one is expected."""
  _join(args)
  expected = _get(args, "expect_devices", "JPEGLM_EXPECT_DEVICES")
  if expected is not None:
    check_device_count(int(expected))


def _join(args) -> None:
  mode = _get(args, "distributed", "JPEGLM_DISTRIBUTED") or "off"
  coordinator = _get(args, "coordinator", "JPEGLM_COORDINATOR")
  num = _get(args, "num_processes", "JPEGLM_NUM_PROCESSES")
  pid = _get(args, "process_id", "JPEGLM_PROCESS_ID")
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


def check_device_count(expected: int) -> None:
  """Prints what this process sees; raises ConfigError (one line) unless `expected` in all."""
  import jax

  found, local, processes = jax.device_count(), jax.local_device_count(), jax.process_count()
  print(f"devices: {found} in all, expected {expected}; process {jax.process_index()} of "
        f"{processes} has {local} local {jax.local_devices()[0].platform} device(s)", flush=True)
  problem = device_count_problem(found, expected, processes, local)
  if problem:
    raise ConfigError(problem)


def device_count_problem(found: int, expected: int, processes: int, local: int) -> str | None:
  """None when `found == expected`, else a one-line explanation with the likely fix."""
  if found == expected:
    return None
  text = (f"JAX sees {found} device(s) ({processes} process(es) x {local} local), but this run "
          f"was launched for {expected}")
  if processes > 1 and local == 1 and found < expected:
    return (text + ": under SLURM, JAX gives each task only GPU $SLURM_LOCALID, so run one "
            "task per GPU (launch/gpu.sh does) or set JAX_LOCAL_DEVICE_IDS to all of a node's "
            "GPUs")
  return (text + ": check the slice or allocation (CUDA_VISIBLE_DEVICES, XLA_FLAGS), or pass "
          "the right --expect-devices")
