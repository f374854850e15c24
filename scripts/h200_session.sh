#!/usr/bin/env bash
# Issue 6's last passes on one GPU. Done in earlier leases: every idea at equal tokens,
# the equal-time passes, the context sweep, the GPU tests of LayerDrop's compiled scale and MoE's grouped kernel,
# the optimizers' LR pass, checkpointing under a 24 GB cap, and the ablations with MoE 2's routing by source
# (records/). The five passes below ran too, in the two lanes of scripts/h200x2_session.sh (records/2026-11-29_h200_moe_kernels,
# _optimizer_shadow_adamw8bit, _layerdrop_speed, _mla_ablation, _checkpointing_chunked_24gb, and _ideas_lr's Lion at 1.2e-3);
# this script repeats them on one GPU, in this order (~23 min):
#   1. MoE's grouped-matmul kernel (dropless) against its padded one and the baseline, one row at a time, 20 steps (~5 min);
#   2. 8-bit AdamW's updates against fp32 AdamW's on the same gradients under bf16 (scripts/optimizer_shadow.py; ~2 min),
#      then LayerDrop's speed with its rescaling inside the compiled blocks, alone beside the baseline (~3 min);
#   3. MLA's ablation, 3 rows at a time: without its rotary key part, and with a full-rank latent (issue 5's open question);
#   4. under the 24 GB cap, the chunked loss alone and with checkpointing beside the baseline (checkpointing alone
#      left the micro-batch at 16: the head's logits, outside the blocks, are the likely bound), 20 steps (~4 min);
#   5. Lion at 1.2e-3 beside the baseline at 3x LR (Lion's best so far, 6e-4, is its grid's top edge) (~4 min).
# Nothing else may share the GPU with a pass: a row sizes its micro-batch by probing free memory, and a
# process beside it (the GPU tests, once) makes it pick a tiny one (micro-batch 2, 20x slower).
# A cut pass resumes in the next lease if its fetched folder is put back under logs/ and carried (and a
# finished one is skipped the same way).
# Stage part 1, start this, then carry .whl and run `python3 -m pip install --no-deps --no-index .whl/*.whl
# && python3 -c "import bitsandbytes"` (8-bit AdamW), then stage part 2 (the passes wait for its shards):
#   setsid nohup bash scripts/h200_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# and poll with scripts/poll.sh.
# After it: the MoE-kernel, LayerDrop, MLA and chunked-loss 24 GB benches become records of their own (scripts/record_bench.py FOLDER records/NAME);
# the Lion bracket (logs/bench_ideas_lr_lion_lr3) joins records/2026-11-29_h200_ideas_lr (record_bench.py --add-to ... --extra "Lion at 1.2e-3=FOLDER").
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
. scripts/ideas_passes.sh
pass_moe_kernels
pass_optimizer_shadow
pass_layerdrop_speed
pass_mla_ablation
pass_checkpointing_chunked_24gb
pass_lion_bracket
echo "done $(date -u +%T)"
