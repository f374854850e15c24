#!/usr/bin/env bash
# Baseline throughput on one GPU: defaults vs --attn sdpa --compile 1 --fused-adamw 1, on webmix.
# Expects the webmix xz files (train shard 1, val, fineweb sample) and MANIFEST.json in .data/webmix.
#   bash scripts/h200_baseline.sh [steps] [out-folder]
set -u
STEPS=${1:-40}
OUTDIR=${2:-logs/h200_baseline}
export PYTHONUNBUFFERED=1
python3 data/webmix.py --source .data/webmix --only webmix_train_000001.bin webmix_val_000000.bin fineweb_sample_val.bin || exit 1
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
mkdir -p "$OUTDIR"
common="--data webmix --max-steps $STEPS --val-every 0 --export 0 --progress lines"
python3 train_gpt2.py $common --out-dir "$OUTDIR/defaults" || echo "defaults run failed"
python3 train_gpt2.py $common --attn sdpa --compile 1 --fused-adamw 1 --out-dir "$OUTDIR/sdpa_compile_fused" || echo "sdpa+compile+fused run failed"
python3 train_gpt2.py $common --attn sdpa --fused-adamw 1 --max-steps 20 --out-dir "$OUTDIR/sdpa_fused" || echo "sdpa+fused run failed"
python3 scripts/compare.py --throughput "$OUTDIR"/defaults "$OUTDIR"/sdpa_compile_fused "$OUTDIR"/sdpa_fused
