#!/usr/bin/env bash
# The next one-GPU lease (records/NOT_RUN.md): issue 5's last pass, each variant on the other side
# of its best learning rate so far and LightRNN with re-allocation (losses only, 3 rows at a time:
# ~9 min), then issue 6: the fused ops one at a time on the eager baseline (~4 min), the ideas
# at an equal token budget (13 rows, ~26 min: cut by the lease's end; started again, it skips the rows
# it measured), the MoE rows' routing (moe_routing.py), then, once the ideas are complete, the ideas at equal time (EQUAL_TIME, same rows).
# Stage part 1, start this, carry .whl and `pip install --no-deps --no-index .whl/*.whl` (8-bit AdamW),
# then stage part 2 (the session waits for its shards):
#   setsid nohup bash scripts/h200_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# and poll with scripts/poll.sh.
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" variants_lr_other  # losses only: 3 rows at a time
python3 scripts/bench.py --rows scripts/rows/fused_ops.json --common "--data webmix" --steps 10 --warmup-steps 3 --row-timeout 200 \
  --out "$LOGS/bench_fused_ops" > "$LOGS/bench_fused_ops.console.txt" 2>&1; echo "fused ops (eager rows, one at a time): exit $?"
bash scripts/equal_budget_session.sh "$LOGS" ideas
for run in "$LOGS"/bench_ideas/moe*_top1; do  # the MoE rows keep their weights: where do their experts route?
  if [ -f "$run/model.safetensors" ]; then
    python3 scripts/moe_routing.py "$run" --tokens 1048576 > "$run.routing.txt" 2>&1; echo "routing $run: exit $?"
  fi
done
EQUAL_TIME="$LOGS/bench_ideas/bench.json" PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas
echo "done $(date -u +%T)"
