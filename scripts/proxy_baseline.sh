#!/usr/bin/env bash
# The baseline at proxy scale: one pass over webmix's 7 train shards (333 steps of 524,288 tokens,
# schedule scaled), validating every 50 steps on webmix and fineweb_sample.
#   bash scripts/proxy_baseline.sh [out-dir] [extra flags...]
# Needs the 7 webmix train shards, the val shard and fineweb_sample in data/webmix (python data/webmix.py).
set -u
OUT=${1:-logs/proxy_baseline}
shift || true
export PYTHONUNBUFFERED=1
n=$(ls data/webmix/webmix_train_*.bin 2>/dev/null | wc -l)
[ "$n" -eq 7 ] || { echo "need the 7 webmix train shards in data/webmix, found $n"; exit 1; }
python3 train_gpt2.py --data webmix --max-steps 333 --val-every 50 --export 0 --progress lines --out-dir "$OUT" "$@"
