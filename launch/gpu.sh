#!/usr/bin/env bash
# Run `jpeglm train` on GPUs: one node (one process sees all N GPUs), or several nodes via
# SLURM `srun` (one process per node; `--distributed auto` lets JAX read the SLURM
# environment for the coordinator, process count and id).
#
#   launch/gpu.sh --config configs/jpeglm.py:size=7b --workdir /shared/runs/7b --gpus 8
#   launch/gpu.sh --config configs/jpeglm.py:size=7b --workdir /shared/runs/7b --gpus 8 \
#       --nodes 4 --partition gpu [--dry-run] [-- --config.train.steps=1000]
#
# --help lists every option; launch/README.md has the full recipes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/cluster.py" gpu "$@"
