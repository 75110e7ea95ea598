#!/usr/bin/env bash
# N `jpeglm train` processes on this machine, each with D fake CPU devices, joined into one
# JAX runtime through jax.distributed (coordinator on 127.0.0.1, a free port): the same
# multi-host code path as a TPU pod or a SLURM job, on a laptop.
#
#   launch/local.sh --processes 2 --devices-per-process 2 \
#       --config configs/jpeglm.py:size=tiny --workdir /tmp/run [-- --config.train.steps=20]
#
# Each process logs to WORKDIR/../<basename>.process-I.log (the workdir itself holds only
# what the run writes: one metrics.jsonl and one checkpoint directory, from process 0 / all
# processes together). Exit status: the first failing process's, after stopping the others.
set -euo pipefail

usage() {
  sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'
  echo "options: --processes N (2) --devices-per-process D (1) --config CFG --workdir DIR"
  echo "         [--port P] [--python PY] [-- --config.k=v ...]"
}

processes=2
devices=1
config=""
workdir=""
port=""
python="${PYTHON:-python3}"
overrides=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --processes) processes="$2"; shift 2 ;;
    --devices-per-process) devices="$2"; shift 2 ;;
    --config) config="$2"; shift 2 ;;
    --workdir) workdir="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --python) python="$2"; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    --) shift; overrides+=("$@"); break ;;
    --config.*) overrides+=("$1"); shift ;;
    *) echo "local.sh: error: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
if [[ -z "$config" || -z "$workdir" ]]; then
  echo "local.sh: error: --config and --workdir are required" >&2; usage >&2; exit 2
fi
if ! [[ "$processes" =~ ^[1-9][0-9]*$ && "$devices" =~ ^[1-9][0-9]*$ ]]; then
  echo "local.sh: error: --processes and --devices-per-process must be positive integers" >&2
  exit 2
fi
if [[ -z "$port" ]]; then
  port="$("$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
fi

log_prefix="${workdir%/}"
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
}
trap cleanup INT TERM

for ((i = 0; i < processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    "$python" -m jpeglm train --config "$config" --workdir "$workdir" \
      --coordinator "127.0.0.1:$port" --num-processes "$processes" --process-id "$i" \
      --expect-devices "$((processes * devices))" \
      ${overrides[@]+"${overrides[@]}"} > "$log_prefix.process-$i.log" 2>&1 &
  pids+=("$!")
done
echo "local.sh: $processes processes x $devices devices, coordinator 127.0.0.1:$port," \
     "logs $log_prefix.process-*.log"

status=0
remaining=("${pids[@]}")
while [[ ${#remaining[@]} -gt 0 ]]; do
  # Wait for any one process; on a failure stop the rest (they would hang on collectives).
  set +e
  wait -n -p done_pid "${remaining[@]}"
  code=$?
  set -e
  next=()
  for pid in "${remaining[@]}"; do [[ "$pid" != "$done_pid" ]] && next+=("$pid"); done
  remaining=(${next[@]+"${next[@]}"})
  if [[ $code -ne 0 && $status -eq 0 ]]; then
    status=$code
    echo "local.sh: a process exited with $code; stopping the others" >&2
    for pid in ${remaining[@]+"${remaining[@]}"}; do kill "$pid" 2>/dev/null || true; done
  fi
done
tail -n 3 "$log_prefix.process-0.log"
exit "$status"
