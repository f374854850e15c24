#!/usr/bin/env bash
# The multi-GPU lease (issue 3, blocked while no multi-GPU kind is lent): the GPU tests, then the
# baseline's 50 steps on one GPU (the DDP reference) and the same 50 steps under torchrun on every
# GPU of the machine, at the same global batch. Needs staged part 1 (scripts/stage_part.sh):
#   setsid nohup bash scripts/h200x2_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# One-GPU leases: scripts/equal_budget_session.sh (issues 5 and 6), scripts/speedrun_webmix.sh.
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS/ddp"
gpus=$(nvidia-smi -L | wc -l)
[ "$gpus" -ge 2 ] || { echo "this lease is for a machine with 2 or more GPUs; found $gpus"; exit 1; }

baseline_50_steps() {  # the DDP comparison: same flags, same global batch, 1 or N processes
  local out=$1; shift
  "$@" train_gpt2.py --data webmix --max-steps 50 --val-every 25 --attn sdpa --compile 1 --export 0 --progress lines --out-dir "$out"
}

echo "start $(date -u +%T) on $gpus GPUs"
timeout 300 python3 -m pytest -q tests/test_gpu.py > "$LOGS/gpu_tests.txt" 2>&1; echo "GPU tests: $(tail -n 1 "$LOGS/gpu_tests.txt")"
CUDA_VISIBLE_DEVICES=0 baseline_50_steps "$LOGS/ddp/one_gpu" python3 > "$LOGS/ddp/one_gpu.console.txt" 2>&1
echo "one GPU exit $? $(date -u +%T)"
baseline_50_steps "$LOGS/ddp/all_gpus" python3 -m torch.distributed.run --standalone --nproc_per_node="$gpus" > "$LOGS/ddp/all_gpus.console.txt" 2>&1
echo "torchrun exit $? $(date -u +%T)"
python3 scripts/compare.py "$LOGS/ddp/one_gpu" "$LOGS/ddp/all_gpus" --out "$LOGS/ddp"
