#!/usr/bin/env bash
# One lease for issues 5 and 6: every row of a rows file side by side against the baseline in one
# call, with throughput, MFU, memory and the webmix / fineweb_sample loss after an equal token
# budget (63 steps x 524,288 = 33M tokens, 19% of a webmix pass; each row on its own warmup +
# cosine schedule scaled to those steps). Needs staged parts 1 and 2 (scripts/stage_part.sh:
# val, fineweb_sample and train shards 1-3, 75M tokens). Started like h200x2_session.sh:
#   setsid nohup bash scripts/equal_budget_session.sh logs variants > logs/session.txt 2>&1 < /dev/null &
#   (ROWS: variants = the user's scripts, issue 5; ideas = the seed's ideas, issue 6; LR_SCALE=3
#   repeats the rows at 3x the baseline's learning rate, the first check of each row's LR;
#   variants_lr = the variants whose output layer or mixer differs from the baseline's, for that check;
#   ideas_lr = the optimizers' learning rates: AdamW / 8-bit AdamW at LR_SCALE, Lion at two --lion-lr;
#   ideas_lr_lion = Lion at 1.2e-3 beside the baseline at LR_SCALE (Lion's best so far, 6e-4, is ideas_lr's top edge);
#   checkpointing_24gb = what checkpointing frees under a 24 GB card's cap: micro-batch and speed at 1024 and 2048;
#   variants_lr_other = each variant at the other side of its best LR so far, the baseline at its best;
#   mla_ablation = MLA without its rotary key part and with a full-rank latent, beside MLA-256 and the baseline;
#   EQUAL_TIME=logs/bench_ideas/bench.json repeats the rows at the base row's training time of that bench;
#   ideas_rest = the ideas the first ideas lease did not reach, with their own baseline (and LayerDrop re-run);
#   moe_kernels = MoE 4 experts with the grouped-matmul kernel (dropless) beside the padded one (capacity 1.25) and the baseline;
#   ideas_ablation = what the second ideas lease left open: 8-bit AdamW on a second seed, curriculum and one-cycle apart, document masking at 1024;
#   ONLY=a,b benches only those rows of the rows file (bench.py --only);
#   SEEDS=2 also runs each row on --seed 1 (bench.py --seeds) and adds each row's spread over its seeds;
#   PARALLEL=3 runs 3 rows at once, each capped at 130/3 GiB: for passes that compare losses only)
# 8-bit AdamW (ideas) needs bitsandbytes, which the GPU machine cannot download: fetch its wheel here
# (pip download bitsandbytes --no-deps -d .whl; ~43 MB, it has CUDA 13 kernels), carry .whl in its
# own call after the session started and run `pip install --no-deps --no-index .whl/*.whl` there;
# the session waits for part 2's shards, so stage part 2 after the wheel.
# Issue 5's lease, both passes (a pass started again skips the rows it already measured):
#   (bash scripts/equal_budget_session.sh logs variants; LR_SCALE=3 bash scripts/equal_budget_session.sh logs variants_lr)
set -u
LOGS=${1:-logs}
ROWS=${2:-variants}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
bash scripts/wait_for_shards.sh
lr_flag=""
[ -n "${LR_SCALE:-}" ] && lr_flag="--lr $(python3 -c "print(6e-4 * ${LR_SCALE})")"
bench_flags=()
[ -n "${EQUAL_TIME:-}" ] && bench_flags=(--equal-time "$EQUAL_TIME")
[ -n "${ONLY:-}" ] && bench_flags+=(--only "$ONLY")
[ -n "${SEEDS:-}" ] && bench_flags+=(--seeds "$SEEDS")
parallel=${PARALLEL:-1}
bench_flags+=(--parallel "$parallel" --memory-cap-gib "$(python3 -c "print(130 // $parallel)")")
echo "start $(date -u +%T) rows=$ROWS ${lr_flag} ${bench_flags[*]}"
python3 scripts/bench.py --rows "scripts/rows/$ROWS.json" --common "--data webmix --compile 1 $lr_flag" --steps 60 --warmup-steps 3 \
  --val-tokens 2097152 --row-timeout 420 "${bench_flags[@]}" --out "$LOGS/bench_$ROWS${LR_SCALE:+_lr$LR_SCALE}${EQUAL_TIME:+_equal_time}${SEEDS:+_seeds$SEEDS}"
code=$?  # before the line below, whose $(date) would overwrite it
echo "done $(date -u +%T) exit $code"
