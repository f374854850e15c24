#!/usr/bin/env bash
# One lease on the webmix measurements, started after staging part 1 (scripts/stage_part.sh); it waits
# for the other parts to arrive:
#   setsid nohup bash scripts/h200x2_session.sh logs > logs/session.txt 2>&1 < /dev/null &
# On 2 GPUs the single-GPU runs go side by side: GPU 0 the speedrun's 24 GB fit check, the speedrun
# and its repeat; GPU 1 the proxy-scale baseline and the baseline for 50 steps (the 1-GPU half of
# the DDP comparison); last the same 50 steps under torchrun on both GPUs. On 1 GPU, one after
# another: the speedrun, the proxy baseline (validating every 111 steps to save device time), the
# speedrun's repeat and the fit check (no DDP comparison).
set -u
LOGS=${1:-logs}
export PYTHONUNBUFFERED=1
mkdir -p "$LOGS/ddp"

wait_for_shards() {
  for _ in $(seq 900); do
    [ "$(ls data/webmix/webmix_train_*.bin 2>/dev/null | wc -l)" -eq 7 ] && [ -f data/webmix/fineweb_sample_val.bin ] && return 0
    sleep 1
  done
  echo "the 7 webmix train shards never arrived"; return 1
}

baseline_50_steps() {  # the DDP comparison: same flags, same global batch, 1 or 2 processes
  local out=$1; shift
  "$@" train_gpt2.py --data webmix --max-steps 50 --val-every 25 --attn sdpa --compile 1 --export 0 --progress lines --out-dir "$out"
}

gpu0() {
  export CUDA_VISIBLE_DEVICES=0
  RUNS=fit_24gb bash scripts/speedrun_webmix.sh "$LOGS/speedrun_webmix"
  wait_for_shards || return
  RUNS="best repeat" bash scripts/speedrun_webmix.sh "$LOGS/speedrun_webmix"
}

gpu1() {
  export CUDA_VISIBLE_DEVICES=1
  wait_for_shards || return
  bash scripts/proxy_baseline.sh "$LOGS/proxy_baseline" --attn sdpa --compile 1
  baseline_50_steps "$LOGS/ddp/one_gpu" python3
}

echo "start $(date -u +%T)"
if [ "$(nvidia-smi -L | wc -l)" -lt 2 ]; then
  wait_for_shards || exit 1
  TORCH_LOGS=recompiles RUNS=best bash scripts/speedrun_webmix.sh "$LOGS/speedrun_webmix"
  echo "speedrun done $(date -u +%T)"
  bash scripts/proxy_baseline.sh "$LOGS/proxy_baseline" --attn sdpa --compile 1 --val-every 111
  echo "proxy baseline done $(date -u +%T)"
  RUNS="repeat fit_24gb" bash scripts/speedrun_webmix.sh "$LOGS/speedrun_webmix"
  echo "done $(date -u +%T)"; exit 0
fi
gpu0 > "$LOGS/gpu0.txt" 2>&1 &
gpu1 > "$LOGS/gpu1.txt" 2>&1 &
wait
echo "single-GPU runs done $(date -u +%T)"
baseline_50_steps "$LOGS/ddp/two_gpus" python3 -m torch.distributed.run --standalone --nproc_per_node=2 > "$LOGS/ddp/two_gpus.console.txt" 2>&1
echo "torchrun exit $? $(date -u +%T)"
