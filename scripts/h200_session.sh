#!/usr/bin/env bash
# The next one-GPU lease (records/NOT_RUN.md): issue 5's variants against the baseline at equal
# tokens (~18 min), the static decoder's GPU test and the inference benchmark (issue 7, ~3 min),
# then the variants' LR check at 3x, which may not finish in the lease (it resumes in the next).
# Stage parts 1 and 2 (scripts/stage_part.sh); start it after part 1:
#   setsid nohup bash scripts/h200_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# and poll with scripts/poll.sh. A pass started again skips the rows it already measured.
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS"
bash scripts/equal_budget_session.sh "$LOGS" variants
timeout 180 python3 -m pytest -q tests/test_gpu.py -k static > "$LOGS/gpu_tests_static.txt" 2>&1; echo "static decoder GPU tests: $(tail -n 1 "$LOGS/gpu_tests_static.txt")"
python3 scripts/bench_inference.py --eval-tokens 8192 --out "$LOGS/bench_inference" > "$LOGS/bench_inference.console.txt" 2>&1; echo "inference bench: exit $?"
LR_SCALE=3 bash scripts/equal_budget_session.sh "$LOGS" variants_lr
echo "done $(date -u +%T)"
