#!/usr/bin/env bash
# The next one-GPU lease (issue 6; records/NOT_RUN.md), in order:
#   0. the GPU test of LayerDrop's compiled regions (no recompiles whatever it drops; ~1 min);
#   1. the ideas the first ideas lease did not reach, beside their own baseline, one row at a time
#      (scripts/rows/ideas_rest.json: LayerDrop again with its loss compiled and with --layerdrop 0,
#      8-bit AdamW, Muon for reference, the MoE rows, R-Drop, curriculum, sequential MTP, 4096 context; ~25 min), with
#      TORCH_LOGS=recompiles so a row that recompiles inside its timed steps shows it;
#   2. where the MoE rows' experts route (moe_routing.py);
#   3. the ideas at equal time, 3 rows at a time (losses only): the first lease's measured rows
#      against its bench (records/2026-11-29_h200_ideas_equal_tokens), then these rows against theirs;
#   4. MLA's ablation, 3 rows at a time: without its rotary key part, and with a full-rank latent.
# A cut pass resumes in the next lease if its fetched folder is put back under logs/ and carried.
# Stage part 1, start this, carry .whl and run `python3 -m pip install --no-deps --no-index .whl/*.whl
# && python3 -c "import bitsandbytes"` (8-bit AdamW: bitsandbytes and packaging, which it imports;
# the import shows at once whether the row can run), then stage part 2 (the session waits for its shards):
#   setsid nohup bash scripts/h200_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# and poll with scripts/poll.sh.
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
python3 -m pytest -q tests/test_gpu.py -k layerdrop 2>&1 | tail -n 3  # LayerDrop's compiled regions: no recompiles on CUDA
TORCH_LOGS=recompiles bash scripts/equal_budget_session.sh "$LOGS" ideas_rest
for run in "$LOGS"/bench_ideas_rest/moe*_top1; do  # the MoE rows keep their weights: where do their experts route?
  if [ -f "$run/model.safetensors" ]; then
    python3 scripts/moe_routing.py "$run" --tokens 1048576 > "$run.routing.txt" 2>&1; echo "routing $run: exit $?"
  fi
done
EQUAL_TIME=records/2026-11-29_h200_ideas_equal_tokens/bench.json ONLY=baseline,checkpointing,chunked_ce,lion,mtp_parallel PARALLEL=3 \
  bash scripts/equal_budget_session.sh "$LOGS" ideas
EQUAL_TIME="$LOGS/bench_ideas_rest/bench.json" PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" ideas_rest
PARALLEL=3 bash scripts/equal_budget_session.sh "$LOGS" mla_ablation  # where MLA's gain per token comes from (issue 5's open question)
echo "done $(date -u +%T)"
