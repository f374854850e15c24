#!/usr/bin/env bash
# For a lent GPU machine: wait, then report a background session's progress and pack its logs.
#   bash scripts/poll.sh SECONDS [LOGS]
# The lent machine goes back after ~30 s without a call in flight, taking every background run
# with it: chain polls back to back for as long as a session runs.
# Sleeps SECONDS (keeping the call, and so the machine, busy), prints the session log and the
# last validation and step lines of every run console, and packs LOGS (default logs) without
# checkpoints or weights into $OUT/logs.tgz when $OUT is set, so results survive the machine.
set -u
sleep "${1:-0}"
LOGS=${2:-logs}
[ -f "$LOGS/session.txt" ] && grep -v "^V[0-9]" "$LOGS/session.txt" | tail -n 8
for lane in "$LOGS"/lane_*.txt; do  # a two-GPU session's lanes
  [ -f "$lane" ] && printf '%s\n%s\n' "== $lane" "$(grep -E "^(start|done|\[)" "$lane" | tail -n 4)"
done
for console in $(find "$LOGS" -name "*.console.txt" -o -name "log.txt" | sort); do
  last=$(grep -E "^(val step|step |reached|finished)" "$console" | tail -n 2)
  [ -n "$last" ] && printf '%s\n%s\n' "== $console" "$last"
done
if [ -n "${OUT:-}" ]; then
  tar czf "$OUT/logs.tgz" --exclude='*.pt' --exclude='*.safetensors' --exclude='checkpoints' "$LOGS" && echo "packed $LOGS into \$OUT/logs.tgz"
fi
