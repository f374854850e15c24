#!/usr/bin/env bash
# The next one-GPU lease (issue 6; records/NOT_RUN.md). The issue's own asks first, then the follow-ups:
#   0. the GPU tests of the code built since the last lease: LayerDrop's scale inside its compiled blocks,
#      MoE's grouped-matmul kernel (~2 min, beside step 1);
#   1. the ideas at equal time, 3 rows at a time (losses only), for the rows whose speed differs from the
#      baseline's (at ~1.00x equal tokens already is equal time): checkpointing and parallel MTP against the
#      first part's bench, MoE, R-Drop, sequential MTP and 4096 context against the second part's (~13 min);
#   2. the context sweep, one length at a time (speed measured): 1024..16384 at 524,288 tokens a step (~10 min);
#   3. what checkpointing buys under a 24 GB card's cap, one row at a time;
#   4. the optimizers' learning rates, 3 at a time: the baseline and 8-bit AdamW at 3x (is 8-bit's -0.064 a
#      larger effective step at an LR too low for 33M tokens?), Lion at 1e-4 and 6e-4 (~6 min);
#   5. the ablations, 3 at a time (scripts/rows/ideas_ablation.json): 8-bit AdamW and the baseline on a
#      second seed, curriculum and one-cycle apart, document masking at 1024;
#   6. LayerDrop's speed with its rescaling inside the compiled blocks, alone beside the baseline (~3 min);
#   7. MLA's ablation, 3 rows at a time: without its rotary key part, and with a full-rank latent (issue 5's open question);
#   8. MoE's grouped-matmul kernel (dropless) against its padded one and the baseline, one row at a time (~6 min).
# It will not all fit in one 30-minute lease: a cut pass resumes in the next if its fetched folder is put
# back under logs/ and carried (and a finished one is skipped the same way).
# Stage part 1, start this, then carry .whl and run `python3 -m pip install --no-deps --no-index .whl/*.whl
# && python3 -c "import bitsandbytes"` (8-bit AdamW), then stage part 2 (the session waits for its shards):
#   setsid nohup bash scripts/h200_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# and poll with scripts/poll.sh.
# After it: the equal-time and LR passes join the records of the benches they repeat
#   (python3 scripts/record_bench.py --add-to records/2026-11-29_h200_ideas_equal_tokens --extra "at equal time=FETCHED/logs/bench_ideas_equal_time" --command "...";
#   the same for ideas_rest); the LR pass (its Lion rows are new labels), the sweep, the 24 GB, ablation, LayerDrop, MLA and
#   MoE-kernel benches become records of their own.
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
# the GPU tests beside the equal-time passes (which compare losses only); done before anything timed starts
python3 -m pytest -q tests/test_gpu.py -k "layerdrop or grouped" > "$LOGS/gpu_tests.txt" 2>&1 &
tests=$!
EQUAL_TIME=records/2026-11-29_h200_ideas_equal_tokens/bench.json ONLY=baseline,checkpointing,mtp_parallel PARALLEL=3 \
  bash scripts/equal_budget_session.sh "$LOGS" ideas
EQUAL_TIME=records/2026-11-29_h200_ideas_rest_equal_tokens/bench.json ONLY=baseline,moe4_top1,moe2_top1,rdrop,mtp_sequential,long_context_4096 \
  PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas_rest
wait "$tests"; echo "GPU tests: $(tail -n 1 "$LOGS/gpu_tests.txt")"
python3 scripts/sweep.py train_gpt2_long_context.py --grid seq-len=1024,2048,4096,8192,16384 --out "$LOGS/ctx" -- \
  --data webmix --compile 1 --max-steps 63 --val-every 63 --val-tokens 2097152 --export 0
bash scripts/equal_budget_session.sh "$LOGS" checkpointing_24gb
LR_SCALE=3 PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas_lr
PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas_ablation
python3 scripts/bench.py --rows scripts/rows/ideas_rest.json --only baseline,layerdrop,layerdrop_off --common "--data webmix --compile 1" \
  --steps 20 --warmup-steps 3 --val-tokens 65536 --row-timeout 300 --out "$LOGS/bench_layerdrop_speed"
PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" mla_ablation  # where MLA's gain per token comes from
bash scripts/equal_budget_session.sh "$LOGS" moe_kernels
echo "done $(date -u +%T)"
