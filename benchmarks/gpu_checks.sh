#!/usr/bin/env bash
# The checks only a GPU can run, in one go (a lent GPU machine is short-lived): the cuDNN
# attention tests (tests/test_gpu.py), the 1b MFU benchmark at 12,288 tokens, and sampling
# at the paper's context against transformers on the same GPU. Each part has its own time
# limit and writes its log to $OUT (default ./gpu_out), so one failure does not hide the rest.
#
#   bash benchmarks/gpu_checks.sh [all|tests|mfu|sampling]   # all: not digits
#   DIGITS_SECONDS=90 bash benchmarks/gpu_checks.sh digits  # the digits demo on the GPU
#   bash benchmarks/gpu_checks.sh remat     # 1b MFU with remat none / save_matmuls, digits
#
# On a machine without jpeglm installed, wheels in .whl/ (the packages the machine lacks)
# are installed into /tmp/site first.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
WHAT=${1:-all}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1

if [ -d .whl ] && ! $PY -c "import grain, ml_collections" 2>/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi

part() {  # name, seconds, command...
  local name=$1 limit=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${limit}s): $*" | tee -a "$OUT/summary.txt"
  local began=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$OUT/$name.log" | tee -a "$OUT/summary.txt"
  echo "== $name: exit $rc after $((SECONDS - began))s" | tee -a "$OUT/summary.txt"
}

want() { [ "$WHAT" = all ] || [ "$WHAT" = "$1" ]; }

if want tests; then
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv >"$OUT/env.txt" 2>&1
  $PY -c "import jax, flax, orbax.checkpoint as o, grain; print('jax', jax.__version__, \
'flax', flax.__version__, 'orbax', o.__version__, jax.devices())" >>"$OUT/env.txt" 2>&1
  cat "$OUT/env.txt" | tee -a "$OUT/summary.txt"
  # The train test starts a second JAX process on the GPU: no preallocation in either.
  XLA_PYTHON_CLIENT_PREALLOCATE=false part tests 240 $PY -m pytest -q -x -p no:cacheprovider tests/test_gpu.py
fi
if want mfu; then
  part mfu_b2 150 $PY benchmarks/bench_mfu.py --batch 2 --steps 5
fi
if want sampling; then
  # JAX and PyTorch share the GPU in one process.
  XLA_PYTHON_CLIENT_MEM_FRACTION=0.6 part sampling 300 $PY benchmarks/bench_sampling.py --d-model 2048 --layers 22 --head-dim 128 \
    --dtype bfloat16 --torch-device cuda --new-tokens 1024 --batches 1,8 --safe-batches ""
fi
if want mfu; then  # more rows a step, after the sampling figures are in
  part mfu_b4 150 $PY benchmarks/bench_mfu.py --batch 4 --steps 5
fi
if [ "$WHAT" = remat ]; then  # remat policies that recompute less (memory allowing)
  part mfu_none_b1 120 $PY benchmarks/bench_mfu.py --batch 1 --steps 5 --remat none
  part mfu_none_b2 120 $PY benchmarks/bench_mfu.py --batch 2 --steps 5 --remat none
  part mfu_matmuls_b2 120 $PY benchmarks/bench_mfu.py --batch 2 --steps 5 --remat save_matmuls
fi
if [ "$WHAT" = digits ] || [ "$WHAT" = remat ]; then
  # The digits demo with the training time given (DIGITS_SECONDS): what a GPU gives it.
  digits=$(mktemp -d)
  part digits $((${DIGITS_SECONDS:-90} + 120)) $PY -c "import sys; import jpeglm.demos.digits as d; \
d.TRAIN_SECONDS = float(sys.argv[2]); d.main(sys.argv[1])" "$digits" "${DIGITS_SECONDS:-90}"
  cp "$digits/summary.json" "$OUT/digits_summary.json"
  for kind in unconditional_syntax_safe completions; do
    cp "$digits/samples/$kind/grid.png" "$OUT/digits_$kind.png"
  done
fi
