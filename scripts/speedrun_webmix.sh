#!/usr/bin/env bash
# The speedrun on webmix: the recipe twice (times vary between runs: quote both), a 24 GB fit
# check, then the ablations (one component off at a time), and a comparison table + plots.
# Needs the 7 webmix train shards, the val shard and fineweb_sample in data/webmix
# (scripts/stage_part.sh). On the lent GPU start it with setsid nohup and read $OUT from later calls.
#   bash scripts/speedrun_webmix.sh [out-dir] [extra flags for every run...]
set -u
OUT=${1:-logs/speedrun_webmix}
shift || true
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
n=$(ls data/webmix/webmix_train_*.bin 2>/dev/null | wc -l)
[ "$n" -eq 7 ] || { echo "need the 7 webmix train shards in data/webmix, found $n"; exit 1; }
run() {
  local name=$1; shift
  python3 train_gpt2_speedrun.py --data webmix --export 0 --progress lines --out-dir "$OUT/$name" "$@" > "$OUT/$name.console.txt" 2>&1
  echo "$name: exit $? $(grep -E '^(reached|finished)' "$OUT/$name.console.txt" | tail -1)"
}
run best "$@"
run repeat "$@"
run fit_24gb --memory-cap-gib 24 --max-steps 20 "$@"
run no_muon --muon 0 "$@"
run no_value_embeds --value-embeds 0 "$@"
run no_window_schedule --window-schedule 0 "$@"
python3 scripts/compare.py "$OUT"/best "$OUT"/repeat "$OUT"/no_muon "$OUT"/no_value_embeds "$OUT"/no_window_schedule --out "$OUT"
