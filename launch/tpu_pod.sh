#!/usr/bin/env bash
# Run `jpeglm train` on a Cloud TPU VM slice: create or reuse it (queued resources), install
# the project on every worker, start training on all workers with `--distributed auto`,
# stream worker 0's log; `--action down` or `--teardown` deletes the slice.
#
#   launch/tpu_pod.sh --name jpeglm-7b --zone us-east5-a --accelerator v5p-32 \
#       --config configs/jpeglm.py:size=7b --workdir gs://BUCKET/jpeglm-7b [--dry-run] \
#       [-- --config.train.steps=1000]
#
# --help lists every option; launch/README.md has the full recipes.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/cluster.py" tpu "$@"
