#!/usr/bin/env bash
# The speedrun on webmix: the recipe twice (times vary between runs: quote both), a 24 GB fit
# check, the ablations (one component off at a time), then a comparison table + plots.
# Needs the 7 webmix train shards, the val shard and fineweb_sample in data/webmix (python data/webmix.py).
#   [RUNS="best repeat"] bash scripts/speedrun_webmix.sh [out-dir] [extra flags for every run...]
# RUNS picks a subset (default: all, in the order below); runs already finished in out-dir are kept.
set -u
OUT=${1:-logs/speedrun_webmix}
shift || true
RUNS=${RUNS:-"best repeat fit_24gb no_muon no_value_embeds no_window_schedule"}
# every training run flags_for knows, in the order of the comparison table (fit_24gb is a memory check, not compared)
COMPARED="best repeat no_muon no_value_embeds no_window_schedule recipe_c7059fe polar batch_ramp align_bos no_bigram torch_loss steps440 normuon val_screen mtp"
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
n=$(ls data/webmix/webmix_train_*.bin 2>/dev/null | wc -l)
[ "$n" -eq 7 ] || [ "$RUNS" = fit_24gb ] || { echo "need the 7 webmix train shards in data/webmix, found $n"; exit 1; }

flags_for() {
  case $1 in
    best) ;;
    repeat) echo "--seed 1 --data-order-seed 1" ;;  # a repeat: another seed and data order (the same seed shows GPU nondeterminism only)
    # 22.5 GiB: a 24 GB card's memory less the CUDA context and a desktop's share
    fit_24gb) echo "--memory-cap-gib 22.5 --max-steps 20 --val-every 0" ;;
    no_muon) echo "--muon 0" ;;
    no_value_embeds) echo "--value-embeds 0" ;;
    no_window_schedule) echo "--window-schedule 0" ;;
    # beyond the default set (RUNS="..." picks them): the recipe as first measured (c7059fe: all but its fp32
    # residual stream and its window rounding, which are no longer switches), and candidates to try
    recipe_c7059fe) echo "--rope full --skip-attn-layers none --muon-split-qkv 0 --cooldown-frac 0.4 --attn-gate 0 --muon-tall-scale 1 --muon-momentum-warmup 75 --adam-eps 3.93216e-5 --bigram-buckets 0 --max-steps 440" ;;
    polar) echo "--muon-coefficients polar --muon-lr 0.06" ;;  # with the Muon lr of the public record that adopted it
    batch_ramp) echo "--batch-ramp-start 0.5 --batch-ramp-frac 0.3" ;;
    align_bos) echo "--align-bos 1" ;;
    normuon) echo "--normuon 1" ;;
    val_screen) echo "--val-screen-tokens 2097152" ;;  # same training; fewer full validations (compare eval time and crossing step with best)
    # issue 6's ideas tried in the record: MTP (t+2, t+3 through adapters, weight falling to 0 by mid-run; -0.036 per token on the baseline)
    mtp) echo "--mtp-offsets 2" ;;
    # the defaults' latest additions, one at a time (records/2026-11-29_h200_speedrun_steps410)
    no_bigram) echo "--bigram-buckets 0" ;;
    torch_loss) echo "--loss-kernel torch" ;;
    steps440) echo "--max-steps 440 --late-val-every 5 --late-val-frac 0.15" ;;  # one whole pass, the earlier preset
    *) echo "unknown run $1" >&2; return 1 ;;
  esac
}

for name in $RUNS; do
  extra=$(flags_for "$name") || exit 2
  if [ -f "$OUT/$name/summary.json" ]; then echo "$name: already done"; continue; fi
  # shellcheck disable=SC2086
  python3 train_gpt2_speedrun.py --data webmix --export 0 --progress lines --out-dir "$OUT/$name" $extra "$@" > "$OUT/$name.console.txt" 2>&1
  echo "$name: exit $? $(grep -E '^(reached|finished)' "$OUT/$name.console.txt" | tail -1)"
done
done_runs=$(for r in $COMPARED; do [ -f "$OUT/$r/summary.json" ] && echo "$OUT/$r"; done)
# shellcheck disable=SC2086
[ -n "$done_runs" ] && python3 scripts/compare.py $done_runs --out "$OUT"
exit 0
