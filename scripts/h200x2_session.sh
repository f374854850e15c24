#!/usr/bin/env bash
# The two-GPU lease (nvidia-h200-x2); ran once in full at 13a05d4 (records/2026-11-29_h200x2_torchrun_baseline and _speedrun,
# and the lanes' records named in scripts/h200_session.sh). First issue 3's torchrun comparison: the baseline's 50 steps and
# the record script's 40 steps, each on one GPU and under torchrun on both GPUs at the same global batch
# (the one-GPU runs go side by side, one per GPU). Then issue 6's remaining runs (scripts/h200_session.sh's
# list) in two lanes, one per GPU, each lane in order of need:
#   GPU 0: 8-bit AdamW's same-gradient check, MLA's ablation, Lion above 6e-4 (losses only, 3 rows at a time);
#   GPU 1: MoE's grouped kernel, LayerDrop's speed, the chunked loss under a 24 GB cap (one row at a time).
# A lane's speed figures come from rows alone on their GPU; the other GPU is busy meanwhile (shared CPUs).
# Needs staged part 1 to start and part 2 before the lanes (scripts/stage_part.sh); the bitsandbytes wheel
# as in scripts/h200_session.sh. Start it, then poll with scripts/poll.sh:
#   setsid nohup bash scripts/h200x2_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# PART=ddp stops after the torchrun comparison.
# A pass or sweep cut by the lease's end resumes in the next if its fetched folder is put back under logs/.
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
# the lender's rule for multi-GPU machines: NVLink multicast stays off
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
mkdir -p "$LOGS/ddp"
gpus=$(nvidia-smi -L | wc -l)
[ "$gpus" -ge 2 ] || { echo "this lease is for a machine with 2 or more GPUs; found $gpus"; exit 1; }

baseline_50_steps() {  # same flags, same global batch, 1 or N processes
  local out=$1; shift
  "$@" train_gpt2.py --data webmix --max-steps 50 --val-every 25 --attn sdpa --compile 1 --export 0 --progress lines --out-dir "$out"
}
speedrun_40_steps() {
  local out=$1; shift
  "$@" train_gpt2_speedrun.py --data webmix --max-steps 40 --val-every 20 --late-val-every 0 --export 0 --progress lines --out-dir "$out"
}

echo "start $(date -u +%T) on $gpus GPUs"
(CUDA_VISIBLE_DEVICES=0 baseline_50_steps "$LOGS/ddp/baseline_one_gpu" python3 > "$LOGS/ddp/baseline_one_gpu.console.txt" 2>&1
 echo "baseline, one GPU: exit $? $(date -u +%T)") &
(CUDA_VISIBLE_DEVICES=1 speedrun_40_steps "$LOGS/ddp/speedrun_one_gpu" python3 > "$LOGS/ddp/speedrun_one_gpu.console.txt" 2>&1
 echo "speedrun, one GPU: exit $? $(date -u +%T)") &
wait
baseline_50_steps "$LOGS/ddp/baseline_torchrun" python3 -m torch.distributed.run --standalone --nproc_per_node="$gpus" \
  > "$LOGS/ddp/baseline_torchrun.console.txt" 2>&1
echo "baseline, torchrun on $gpus GPUs: exit $? $(date -u +%T)"
speedrun_40_steps "$LOGS/ddp/speedrun_torchrun" python3 -m torch.distributed.run --standalone --nproc_per_node="$gpus" \
  > "$LOGS/ddp/speedrun_torchrun.console.txt" 2>&1
echo "speedrun, torchrun on $gpus GPUs: exit $? $(date -u +%T)"
python3 scripts/compare.py "$LOGS/ddp/baseline_one_gpu" "$LOGS/ddp/baseline_torchrun" --throughput --out "$LOGS/ddp/baseline"
python3 scripts/compare.py "$LOGS/ddp/speedrun_one_gpu" "$LOGS/ddp/speedrun_torchrun" --throughput --out "$LOGS/ddp/speedrun"
[ "${PART:-all}" = ddp ] && { echo "done (PART=ddp) $(date -u +%T)"; exit 0; }

. scripts/ideas_passes.sh
lane_gpu0() { pass_optimizer_shadow; pass_mla_ablation; pass_lion_bracket; }  # no speed figures
lane_gpu1() { pass_moe_kernels; pass_layerdrop_speed; pass_checkpointing_chunked_24gb; }  # one row at a time, speed measured
CUDA_VISIBLE_DEVICES=0 lane_gpu0 > "$LOGS/lane_gpu0.txt" 2>&1 &
CUDA_VISIBLE_DEVICES=1 lane_gpu1 > "$LOGS/lane_gpu1.txt" 2>&1 &
wait
echo "done $(date -u +%T)"
