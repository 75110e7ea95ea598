#!/usr/bin/env bash
# On one TPU worker VM (copied there as ~/jpeglm-worker.sh by launch/tpu_pod.sh): keeps one
# training run per worker, known by its pid file, so a rerun can stop the last one first (a
# leftover process holds the TPU: "open(/dev/vfio/0): Device or resource busy").
#
#   bash ~/jpeglm-worker.sh stop [SECONDS]   stop the previous run (SIGTERM to its process
#                                            group, which saves a checkpoint; SIGKILL after
#                                            SECONDS, default 120); fail if the TPU is still held
#   bash ~/jpeglm-worker.sh start CMD...     run CMD from ~/jpeglm, detached (nohup, own
#                                            session): log ~/jpeglm-train.log, pid file
#                                            ~/jpeglm-train.pid, exit status ~/jpeglm-train.rc
#   bash ~/jpeglm-worker.sh status           "exit N", "running" or "lost" (ended with no
#                                            status: killed), then the log's last lines
#   bash ~/jpeglm-worker.sh follow           print the log until the run ends; exit with its
#                                            status
set -euo pipefail

pidfile="$HOME/jpeglm-train.pid"
log="$HOME/jpeglm-train.log"
rcfile="$HOME/jpeglm-train.rc"
me="$(hostname)"

alive() {  # is any process of the recorded run's process group left (zombies aside)?
  [[ -s "$pidfile" ]] || return 1
  ps -eo pgid=,stat= | awk -v g="$(cat "$pidfile")" '$1 == g && $2 !~ /^Z/ {f = 1} END {exit !f}'
}

tpu_holders() {  # pids with a TPU device open (v4: /dev/accel*, v5e/v5p/v6e: /dev/vfio/N)
  shopt -s nullglob
  local devices=(/dev/accel* /dev/vfio/[0-9]*)
  if [[ ${#devices[@]} -gt 0 ]] && command -v fuser > /dev/null; then
    fuser "${devices[@]}" 2>/dev/null | tr -s ' ' | sed 's/^ //' || true
  fi
}

case "${1:-}" in
  stop)
    grace="${2:-120}"
    if alive; then
      group="$(cat "$pidfile")"
      echo "$me: stopping the previous run (process group $group)"
      kill -TERM -- "-$group" 2>/dev/null || true
      for ((i = 0; i < grace * 10; i++)); do alive || break; sleep 0.1; done
      if alive; then
        echo "$me: still running after ${grace}s; killing it"
        kill -KILL -- "-$group" 2>/dev/null || true
        for ((i = 0; i < 50; i++)); do alive || break; sleep 0.1; done
      fi
    fi
    rm -f "$pidfile"
    holders="$(tpu_holders)"
    if [[ -n "$holders" ]]; then
      echo "$me: the TPU is held by process(es) $holders, not started by this launcher:" \
           "stop them (kill $holders) and rerun" >&2
      exit 1
    fi
    ;;
  start)
    shift
    if alive; then
      echo "$me: a run is still going (process group $(cat "$pidfile")); stop it first" >&2
      exit 1
    fi
    rm -f "$rcfile" "$pidfile"
    cd "$HOME/jpeglm"
    # setsid: the run gets its own process group (its id = the shell's pid), so `stop` ends
    # the trainer and everything it started; nohup and the closed stdin keep it going after
    # ssh disconnects.
    nohup setsid bash -c 'echo $$ > "$0"; "${@:3}" > "$1" 2>&1; echo $? > "$2"' \
      "$pidfile" "$log" "$rcfile" "$@" > /dev/null 2>&1 < /dev/null &
    for ((i = 0; i < 100; i++)); do [[ -s "$pidfile" ]] && break; sleep 0.1; done
    [[ -s "$pidfile" ]] || { echo "$me: training did not start" >&2; exit 1; }
    echo "$me: started (process group $(cat "$pidfile")), log $log"
    ;;
  status)
    if [[ -s "$rcfile" ]]; then
      echo "exit $(cat "$rcfile")"
    elif alive; then
      echo "running"
    else
      echo "lost"
    fi
    [[ -f "$log" ]] && tail -n 3 "$log"
    exit 0
    ;;
  follow)
    if alive; then
      tail -n +1 -F "$log" 2>/dev/null &
      tailer=$!
      while alive; do sleep 1; done
      sleep 1  # the last lines
      kill "$tailer" 2>/dev/null || true
    elif [[ -f "$log" ]]; then
      cat "$log"
    fi
    [[ -s "$rcfile" ]] && exit "$(cat "$rcfile")"
    echo "$me: the run ended without an exit status (killed?)" >&2
    exit 1
    ;;
  *)
    sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
    ;;
esac
