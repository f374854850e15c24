#!/usr/bin/env bash
# The next one-GPU lease (issue 6; records/NOT_RUN.md). Done in earlier leases: every idea at equal tokens,
# the equal-time passes, the context sweep and the GPU tests of LayerDrop's compiled scale and MoE's grouped kernel
# (records/). Left, the issue's own asks first, then the follow-ups:
#   1. the optimizers' learning rates, 3 at a time: the baseline and 8-bit AdamW at 3x (is 8-bit's -0.064 a
#      larger effective step at an LR too low for 33M tokens?), Lion at 1e-4 and 6e-4 (~6 min);
#   2. what checkpointing buys under a 24 GB card's cap: micro-batch and speed at 1024 and 2048, one row at a time, 20 steps (~6 min);
#   3. the ablations, 3 at a time (scripts/rows/ideas_ablation.json): 8-bit AdamW and the baseline on a
#      second seed (single-seed gaps under ~0.1 are in doubt: loss spikes at steps 14-17 are common at this
#      budget), curriculum and one-cycle apart, document masking at 1024 in the same call as the baseline,
#      and MoE 2 again with its weights kept, then where its experts send the tokens of each guessed source
#      (Wikipedia, movie reviews, blogs: scripts/moe_routing.py; the issue asks whether two experts specialise) (~9 min);
#   4. MoE's grouped-matmul kernel (dropless) against its padded one and the baseline, one row at a time, 20 steps (~5 min);
#   5. 8-bit AdamW's updates against fp32 AdamW's on the same gradients under bf16 (scripts/optimizer_shadow.py; ~2 min),
#      then LayerDrop's speed with its rescaling inside the compiled blocks, alone beside the baseline (~3 min);
#   6. MLA's ablation, 3 rows at a time: without its rotary key part, and with a full-rank latent (issue 5's open question).
# Nothing else may share the GPU with a pass: a row sizes its micro-batch by probing free memory, and a
# process beside it (the GPU tests, once) makes it pick a tiny one (micro-batch 2, 20x slower).
# A cut pass resumes in the next lease if its fetched folder is put back under logs/ and carried (and a
# finished one is skipped the same way).
# Stage part 1, start this, then carry .whl and run `python3 -m pip install --no-deps --no-index .whl/*.whl
# && python3 -c "import bitsandbytes"` (8-bit AdamW), then stage part 2 (the passes wait for its shards):
#   setsid nohup bash scripts/h200_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# and poll with scripts/poll.sh.
# After it: the LR pass joins its record (python3 scripts/record_bench.py --add-to records/2026-11-29_h200_ideas_rest_equal_tokens
#   --extra "at 3x LR=FETCHED/logs/bench_ideas_lr_lr3" --command "..."; its Lion rows are new labels there); the 24 GB,
#   ablation, LayerDrop, MLA and MoE-kernel benches become records of their own (scripts/record_bench.py FOLDER records/NAME).
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
. scripts/ideas_passes.sh
pass_ideas_lr
pass_checkpointing_24gb
pass_ideas_ablation
pass_moe_kernels
pass_optimizer_shadow
pass_layerdrop_speed
pass_mla_ablation
echo "done $(date -u +%T)"
