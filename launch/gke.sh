#!/usr/bin/env bash
# Run `jpeglm train` on GKE: a JobSet with one pod per TPU host, one Job per slice
# (`--num-slices N`: data parallel across slices, mesh.dcn_data), or one pod per node of a GPU
# node pool (`--accelerator h100-80gb --nodes N`). `--queue Q` hands it to Kueue. Preempted or
# failed pods restart the whole JobSet (failurePolicy.maxRestarts), which resumes from the
# workdir's checkpoint.
#
#   launch/gke.sh --name jpeglm-7b --accelerator v5p-16 [--num-slices 2] \
#       --config configs/jpeglm.py:size=7b --workdir gs://BUCKET/jpeglm-7b \
#       --image REGION-docker.pkg.dev/PROJECT/REPO/jpeglm:TAG [--queue Q] [--dry-run] \
#       [-- --config.train.steps=1000]
#   launch/gke.sh --name jpeglm-7b --action status|logs|down
#
# --dry-run prints only the manifest. Exit status: 0 done, 2 the launch could not go on.
# --help lists every option; launch/README.md ("GKE") has the setup and the image.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python3}" "$here/gke.py" "$@"
