"""Where a training step's GPU time goes, and what that projects for another card.

    python scripts/profile_step.py train_gpt2_speedrun.py --data webmix [flags...] [--out DIR]
    python scripts/profile_step.py train_gpt2_speedrun.py --data webmix --emulate-gpu rtx4090 --out logs/profile_4090
    python scripts/profile_step.py --table logs/profile_4090/profile.json      (the projection again from a saved profile)

Builds the recipe's trainer exactly as a run would (same micro-batch, compile, optimizers),
warms it up, runs two unprofiled steps, then profiles two steps with the longest attention
window the recipe reaches, and prints the ops by total CUDA time.

With --out (on a GPU) it also splits the GPU kernels' time into bf16 matmuls, FP8 matmuls,
attention and the rest (element-wise, reductions, copies: bound by memory bandwidth), and projects
the step onto each card of kit/core/gpus.py's table: each part's time scaled by the host's over the
card's datasheet rate for what bounds it (kit/core/hw.py: bf16 or FP8 tensor throughput, memory
bandwidth; FP8 work runs in bf16 on a card without FP8). It assumes each part reaches the same
share of the card's peak as of the host's: a projection, not a measurement. Profile under
--emulate-gpu CARD so the step takes the card's paths and micro-batch. Writes profile.json and
profile.md into --out (and the profiled run's log into --out/run). FP8 matmuls are the kernels an FP8 op
launched (cuBLASLt's names need not say FP8) or whose names say so.
"""

import json
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.core import gpus, hw  # noqa: E402
from kit.loop.train import Trainer  # noqa: E402
from kit.tools.runs import load_script  # noqa: E402

MATMUL_MARKS = ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "matmul")  # cuBLAS/CUTLASS kernels
FP8_MARKS = ("e4m3", "e5m2", "fp8", "f8f6f4")
# cuBLASLt's FP8 kernels need not say so in their names (on an H200: nvjet_sm90_qqtst_..., nvjet_sm90_qrsss_...),
# so a kernel also counts as FP8 when one of these ops launched it
FP8_OPS = ("aten::_scaled_mm", "aten::_scaled_grouped_mm")
ATTENTION_MARKS = ("flex_attention", "flash", "fmha", "attention", "sdpa")


def kernel_part(name: str, fp8_kernels=frozenset()) -> str:
    """Which part a GPU kernel's time belongs to, by its name: matmul_fp8, matmul_bf16, attention or memory.
    Inductor's kernels (triton_*) are named after the ops they fuse: its templates (triton_tem_*) are matmuls
    or FlexAttention; its other kernels are element-wise or reductions, whatever ops their names list."""
    lowered = name.lower()
    if "flex_attention" in lowered or (not lowered.startswith("triton_") and any(mark in lowered for mark in ATTENTION_MARKS)):
        return "attention"
    if name in fp8_kernels:
        return "matmul_fp8"
    is_matmul = lowered.startswith("triton_tem") and "mm" in lowered if lowered.startswith("triton_") else any(m in lowered for m in MATMUL_MARKS)
    if is_matmul:
        return "matmul_fp8" if any(mark in lowered for mark in FP8_MARKS) else "matmul_bf16"
    return "memory"


def split_kernel_times(kernels, fp8_kernels=frozenset()) -> dict:
    """{part: seconds} from (kernel name, microseconds) pairs; fp8_kernels: names an FP8 op launched (fp8_kernel_names)."""
    parts = {"matmul_bf16": 0.0, "matmul_fp8": 0.0, "attention": 0.0, "memory": 0.0}
    for name, micros in kernels:
        parts[kernel_part(name, fp8_kernels)] += micros / 1e6
    return parts


def fp8_kernel_names(events) -> frozenset:
    """Names of the GPU kernels that the profile's FP8 matmul ops (FP8_OPS) launched."""
    return frozenset(kernel.name for event in events if event.name in FP8_OPS for kernel in event.kernels)


def rates(name: str) -> dict:
    """A GPU's datasheet rates by its name (kit/core/hw.py): bf16 and FP8 FLOP/s (FP8: None without it), bytes/s."""
    return {"bf16": hw.peak_flops(name), "fp8": hw.peak_flops(name, hw.PEAK_FP8_FLOPS), "memory": hw.peak_flops(name, hw.PEAK_MEMORY_BANDWIDTH)}


def project(parts: dict, host: str, card: str) -> dict:
    """The step's parts on the GPU named `card`, each scaled by the host's rate over the card's for what bounds it."""
    h, c = rates(host), rates(card)
    scaled = {"matmul_bf16": parts["matmul_bf16"] * h["bf16"] / c["bf16"],
              "matmul_fp8": parts["matmul_fp8"] * (h["fp8"] or h["bf16"]) / (c["fp8"] or c["bf16"]),  # no FP8: that work runs in bf16
              "attention": parts["attention"] * h["bf16"] / c["bf16"],
              "memory": parts["memory"] * h["memory"] / c["memory"]}
    return {**scaled, "total": sum(scaled.values())}


def projection_table(parts: dict, host: str, tokens_per_step: int, steps: int) -> str:
    """Markdown: per card of kit/core/gpus.py, the projected seconds per step, tokens/s and the parts' shares (a projection)."""
    per_step = {k: v / steps for k, v in parts.items()}
    lines = ["| card (projection) | s per step | tokens/s | bf16 matmul | FP8 matmul | attention | memory-bound |", "|---|---|---|---|---|---|---|"]
    for key, profile in gpus.PROFILES.items():
        card = profile.name
        if rates(card)["bf16"] is None or rates(card)["memory"] is None:
            continue
        p = project(per_step, host, card)
        share = lambda k: f"{p[k] / p['total']:.0%}" if p["total"] else "-"  # noqa: E731
        lines.append(f"| {key}{' (profiled)' if card in host else ''} | {p['total']:.3f} | {tokens_per_step / p['total']:,.0f} | "
                     f"{share('matmul_bf16')} | {share('matmul_fp8')} | {share('attention')} | {share('memory')} |")
    return "\n".join(lines)


def gpu_kernels(prof):
    """(name, microseconds) of each GPU kernel the profile holds."""
    for event in prof.key_averages():
        if str(getattr(event, "device_type", "")).endswith("CUDA"):
            micros = getattr(event, "self_device_time_total", None)
            yield event.key, micros if micros is not None else event.self_cuda_time_total


def write_profile(out: Path, record: dict) -> str:
    """profile.json (the measured parts) and profile.md (their projection onto each card) into out; returns the table."""
    table = projection_table(record["parts_s_per_2_steps"], record["host"], record["tokens_per_step"], steps=2)
    out.mkdir(parents=True, exist_ok=True)
    (out / "profile.json").write_text(json.dumps(record, indent=1))
    emulated = record.get("emulated")
    (out / "profile.md").write_text(f"Profiled on {record['host']}{f' as {emulated}' if emulated else ''}, {record['tokens_per_step']:,} tokens a step "
                                    f"(projections, not measurements):\n\n{table}\n")
    return table


def pop_option(argv: list, name: str):
    """(the value after `name` in argv or None, argv without the two)."""
    if name not in argv:
        return None, argv
    i = argv.index(name)
    return argv[i + 1], argv[:i] + argv[i + 2:]


def main(argv) -> None:
    table_of, argv = pop_option(list(argv), "--table")
    if table_of:  # the projection again from a saved profile.json (after a change to the datasheet figures or the part rules)
        path = Path(table_of)
        print(write_profile(path.parent, json.loads(path.read_text())))
        return
    if not argv or not argv[0].endswith(".py"):
        raise SystemExit(__doc__)
    out, argv = pop_option(argv, "--out")
    out = Path(out) if out else None
    script, flags = argv[0], argv[1:]
    run_dir = ["--out-dir", str(out / "run")] if out is not None and "--out-dir" not in flags else []  # the profiled run's log beside its profile
    trainer = Trainer(load_script(script).RECIPE, [*flags, "--export", "0", "--val-every", "0", *run_dir])
    trainer.setup()
    if hasattr(trainer.model, "set_window"):
        from kit.modeling.modern import MAX_WINDOW_BLOCKS
        trainer.model.set_window(MAX_WINDOW_BLOCKS)
    trainer.warm_up()
    for _ in range(2):
        trainer.train_step(trainer.accum_steps)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            trainer.train_step(trainer.accum_steps)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=70))
    if out is not None and torch.cuda.is_available():
        host = torch.cuda.get_device_name(trainer.device)  # the real GPU: the times are its
        if None in (rates(host)["bf16"], rates(host)["memory"]):
            raise SystemExit(f"no datasheet figures for {host} in kit/core/hw.py: add them to project from it")
        record = {"script": script, "flags": flags, "host": host, "emulated": gpus.emulated().key if gpus.emulated() else None,
                  "tokens_per_step": trainer.accum_steps * trainer.micro_batch * trainer.cfg.seq_len * trainer.ddp.world_size,
                  "parts_s_per_2_steps": split_kernel_times(gpu_kernels(prof), fp8_kernel_names(prof.events()))}
        print(write_profile(out, record))


if __name__ == "__main__":
    main(sys.argv[1:])
