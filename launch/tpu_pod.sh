#!/usr/bin/env bash
# Run `jpeglm train` on a Cloud TPU VM slice, or on N slices (`--num-slices N`: one queued
# resource, TPU VMs NAME-0 .. NAME-(N-1), data parallel across them): create the queued
# resource or pick up the one there (reading its state: waits while it is queued, stops with
# one line when it FAILED or was SUSPENDED), install the project with Python 3.11 (uv) on every
# worker of every slice, stop the previous run, start training on all of them with the same
# arguments (`--distributed auto --expect-devices N`, and `--config.mesh.dcn_data=N` for N
# slices), stream worker 0's log and report every worker's exit status; `--action down` or
# `--teardown` deletes the slice(s).
#
#   launch/tpu_pod.sh --name jpeglm-7b --zone us-east5-a --accelerator v5p-32 [--num-slices 2] \
#       --config configs/jpeglm.py:size=7b --workdir gs://BUCKET/jpeglm-7b [--dry-run] \
#       [-- --config.train.steps=1000]
#
# Exit status: 0 all workers exited 0, 1 training failed on some worker, 2 the launch could
# not go on. --help lists every option; launch/README.md has the first-time setup.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/cluster.py" tpu "$@"
