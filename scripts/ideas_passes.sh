#!/usr/bin/env bash
# Issue 6's remaining passes, one function each, sourced by the lease scripts: scripts/h200_session.sh runs
# them one after the other on one GPU, scripts/h200x2_session.sh in two lanes (one per GPU). Each writes
# under $LOGS. A pass's rows share its GPU only where it compares losses alone (PARALLEL=3).

speed_bench() {  # speed_bench ROWS ONLY OUT: rows alone on the GPU, 20 steps (speed, memory, micro-batch; no loss figure)
  bash scripts/wait_for_shards.sh
  python3 scripts/bench.py --rows "scripts/rows/$1.json" --only "$2" --common "--data webmix --compile 1" \
    --steps 20 --warmup-steps 3 --val-tokens 65536 --row-timeout 300 --out "$LOGS/$3"
}
route_moe_runs() {  # where each exported MoE run's experts send each guessed source's tokens (scripts/moe_routing.py)
  for run in "$1"/moe*_top1*/; do
    [ -d "$run" ] || continue
    python3 scripts/moe_routing.py "$run" --tokens 1048576 > "${run%/}.routing.txt" 2>&1; echo "routing $run: exit $?"
  done
}
pass_checkpointing_24gb() {  # what checkpointing buys under a 24 GB card's cap: micro-batch and speed at 1024 and 2048
  speed_bench checkpointing_24gb baseline_24gb,checkpointing_24gb,baseline_2048_24gb,checkpointing_2048_24gb bench_checkpointing_24gb
}
pass_checkpointing_chunked_24gb() {  # the same cap with the chunked loss, alone and with checkpointing: does the micro-batch grow, and does it pay?
  speed_bench checkpointing_24gb baseline_24gb,chunked_ce_24gb,checkpointing_chunked_ce_24gb bench_checkpointing_chunked_24gb
}
pass_ideas_lr() {  # the optimizers' learning rates: AdamW and 8-bit AdamW at 3x, Lion at 1e-4 and 6e-4
  LR_SCALE=3 PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas_lr
}
pass_lion_bracket() {  # Lion above its best LR so far (6e-4, the grid's top edge), beside the baseline at 3x LR as in pass_ideas_lr
  LR_SCALE=3 PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas_lr_lion
}
pass_ideas_ablation() {  # second seeds, curriculum and one-cycle apart, document masking at 1024; MoE 2's weights for routing by source
  PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas_ablation
  route_moe_runs "$LOGS/bench_ideas_ablation"
}
pass_optimizer_shadow() {  # 8-bit AdamW's steps against fp32 AdamW's on the same gradients, bf16 autocast, 32 x 1024 tokens a step
  python3 scripts/optimizer_shadow.py --data-file data/webmix/webmix_train_000001.bin --b "--optimizer adamw8bit" --steps 63 \
    --batch-seqs 32 --out "$LOGS/optimizer_shadow_adamw8bit.json" -- --attn sdpa > "$LOGS/optimizer_shadow_adamw8bit.console.txt" 2>&1
}
pass_layerdrop_speed() {  # LayerDrop with its rescaling inside the compiled blocks, alone beside the baseline
  speed_bench ideas_rest baseline,layerdrop,layerdrop_off bench_layerdrop_speed
}
pass_mla_ablation() {  # where MLA's gain per token comes from (issue 5's open question)
  PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" mla_ablation
}
pass_moe_kernels() {  # the grouped-matmul kernel (dropless) against the padded one (capacity 1.25), alone beside the baseline
  speed_bench moe_kernels baseline,moe4_top1,moe4_top1_grouped bench_moe_kernels
}
