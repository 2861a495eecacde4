#!/usr/bin/env bash
# Stops a stack started by `bash scripts/up.sh --detach`: SIGTERM to each process group listed
# in var/run/up.pids (or $MSP_UP_RUN_DIR/up.pids), SIGKILL for any still there after the grace
# period. PostgreSQL and RabbitMQ keep running: they are the machine's, not the stack's.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PID_FILE="$(realpath -m "${MSP_UP_RUN_DIR:-var/run}")/up.pids"
GRACE="${MSP_UP_STOP_GRACE:-20}"
say() { printf '[down] %s\n' "$*" >&2; }
alive() {
  local state
  state="$(cut -d' ' -f3 "/proc/$1/stat" 2>/dev/null)" || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

[ -f "$PID_FILE" ] || { say "nothing to stop ($PID_FILE does not exist)"; exit 0; }
pids=()
while read -r name pid; do
  [ -n "${pid:-}" ] || continue
  if alive "$pid"; then
    say "stopping $name (pid $pid)"
    kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
    pids+=("$pid")
  fi
done <"$PID_FILE"

deadline=$((SECONDS + GRACE))
for pid in "${pids[@]}"; do
  while alive "$pid" && [ "$SECONDS" -lt "$deadline" ]; do sleep 0.2; done
  if alive "$pid"; then
    say "pid $pid ignored SIGTERM for ${GRACE}s: killing it"
    kill -KILL -- "-$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
  fi
done
rm -f "$PID_FILE"
say "stopped"
