#!/usr/bin/env bash
# Run `jpeglm train` on GPUs: one node (one process sees all N GPUs), or several nodes via
# SLURM `srun` with ONE TASK PER GPU (`--distributed auto`: JAX reads the coordinator and
# process ids from SLURM and gives task i of a node GPU i). The run gets
# `--expect-devices NODES*GPUS` and stops before any compute if JAX sees another count.
#
#   launch/gpu.sh --config configs/jpeglm.py:size=7b --workdir /shared/runs/7b --gpus 8
#   launch/gpu.sh --config configs/jpeglm.py:size=7b --workdir /shared/runs/7b --gpus 8 \
#       --nodes 4 --partition gpu [--cpus-per-node 96] [--dry-run] [-- --config.train.steps=1000]
#
# --help lists every option; launch/README.md has the full recipes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/cluster.py" gpu "$@"
