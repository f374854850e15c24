"""Time the soft-capped loss's kernels alone, at the speedrun's micro-batch, on a CUDA GPU.

    python3 scripts/bench_loss_kernels.py [--rows 98304] [--vocab 50304] [--out DIR]

Rows, at the record's loss (three weighted targets per row, the sigmoid cap): the compiled PyTorch
reference (stats; e5m2 gradient plus its transposed copy), the Triton kernels of
kit/modeling/triton_loss.py at each of its autotuning configs (the statistics, the gradient, and
both in one pass), its custom ops as autotuned, and the transposed copy alone. Each row prints milliseconds per call and the bytes
it must move per millisecond, so a kernel far below the GPU's memory bandwidth shows where the
time goes. Writes bench_loss_kernels.json.
"""

import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from kit.modeling import triton_loss  # noqa: E402
from kit.modeling.fp8 import E5M2, E5M2_HEADROOM  # noqa: E402
from kit.modeling.losses import softcapped_grad_unscaled, softcapped_logsumexp_and_loss  # noqa: E402

def time_ms(fn, repeats: int = 10) -> float:
    fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(repeats):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def report(rows, rate_header: str, rate_key: str, rate_of, digits: int, out, file_name: str, meta: dict) -> None:
    """Print a markdown table of (label, ms, work) rows with each row's rate (rate_of(work, ms)), and write them with
    meta as JSON into out/file_name where out is given."""
    results = []
    print(f"| kernel | ms | {rate_header} |\n|---|---|---|")
    for label, ms, work in rows:
        rate = rate_of(work, ms)
        results.append({"kernel": label, "ms": round(ms, 3), rate_key: round(rate, 1)})
        print(f"| {label} | {ms:.{digits}f} | {rate:,.0f} |", flush=True)
    if out:
        os.makedirs(out, exist_ok=True)
        with open(os.path.join(out, file_name), "w") as f:
            json.dump({"device": torch.cuda.get_device_name(), **meta, "results": results}, f, indent=1)


# The record's loss: three weighted targets per row (the next token and two more from the same logits), sigmoid cap
CAP, FORM, WEIGHTS = 23.0, "sigmoid", (1.0, 0.5, 0.25)


def reference_rows(z, targets, weights):
    stats = torch.compile(lambda z, t: softcapped_logsumexp_and_loss(z, t, CAP, FORM, weights))
    grad = torch.compile(lambda z, t, lse: (softcapped_grad_unscaled(z, t, lse, CAP, FORM, weights) * E5M2_HEADROOM).to(E5M2).t().contiguous())
    lse, _ = stats(z, targets)
    yield "torch stats (compiled)", time_ms(lambda: stats(z, targets)), z.numel() * 2
    yield "torch grad e5m2 + transposed copy (compiled)", time_ms(lambda: grad(z, targets, lse)), z.numel() * 4


def triton_rows(z, targets, weights):
    n, v = z.shape
    lse = torch.empty(n, dtype=torch.float32, device=z.device)
    loss = torch.empty_like(lse)
    scale = torch.full((1,), E5M2_HEADROOM, device=z.device)
    g = torch.empty(n, v, dtype=E5M2, device=z.device)
    flags = dict(K=targets.size(1), WEIGHTED=True, SIGMOID=FORM == "sigmoid")
    for block_v, warps in triton_loss.STATS_CONFIGS:
        run = lambda: triton_loss._stats_kernel[(n,)](z, targets, weights, lse, loss, v, z.stride(0), CAP, **flags, BLOCK_V=block_v, num_warps=warps)
        yield f"triton stats BLOCK_V={block_v} warps={warps}", time_ms(run), z.numel() * 2
    for block_n, block_v, warps in triton_loss.GRAD_CONFIGS:
        grid = (triton_loss.triton.cdiv(n, block_n), triton_loss.triton.cdiv(v, block_v))
        run = lambda: triton_loss._grad_kernel[grid](z, targets, weights, lse, scale, g, n, v, z.stride(0), CAP, **flags, BLOCK_N=block_n,
                                                     BLOCK_V=block_v, E5M2=True, num_warps=warps)
        yield f"triton grad e5m2 {block_n}x{block_v} warps={warps}", time_ms(run), z.numel() * 3
    for block_v, warps in triton_loss.STATS_CONFIGS:  # both in one pass: the logits read once from memory, the gradient written
        run = lambda: triton_loss._stats_grad_kernel[(n,)](z, targets, weights, lse, loss, scale, g, v, z.stride(0), CAP, **flags,
                                                           BLOCK_V=block_v, E5M2=True, num_warps=warps)
        yield f"triton stats + grad e5m2 in one pass BLOCK_V={block_v} warps={warps}", time_ms(run), z.numel() * 3
    # the custom ops as the speedrun calls them (autotuned over the configs above), and the
    # gradient's transposed copy that the FP8 weight-gradient product needs
    yield "triton stats (autotuned op)", time_ms(lambda: triton_loss.softcapped_ce_stats(z, targets, CAP, FORM, weights)), z.numel() * 2
    yield ("triton grad e5m2 (autotuned op)", time_ms(lambda: triton_loss.softcapped_ce_grad(z, targets, lse, scale, CAP, E5M2, FORM, weights)),
           z.numel() * 3)
    yield ("triton stats + grad e5m2 in one pass (autotuned op)",
           time_ms(lambda: triton_loss.softcapped_ce_stats_grad(z, targets, scale, CAP, E5M2, FORM, weights)), z.numel() * 3)
    yield "transposed copy of the e5m2 gradient", time_ms(lambda: g.t().contiguous()), z.numel() * 2


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=98304, help="logit rows (tokens) per call: the speedrun's micro-batch")
    parser.add_argument("--vocab", type=int, default=50304)
    parser.add_argument("--out", default=None, help="folder for bench_loss_kernels.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not triton_loss.available("cuda"):
        sys.exit("needs a CUDA GPU and Triton")
    g = torch.Generator(device="cuda").manual_seed(0)
    z = (8 * torch.randn(args.rows, args.vocab, device="cuda", generator=g)).to(torch.bfloat16)
    targets = torch.randint(0, args.vocab, (args.rows, len(WEIGHTS)), device="cuda", generator=g)
    targets[-64:, 1:] = -1  # the last positions of a sequence have no token two or three ahead
    weights = torch.tensor(WEIGHTS, device="cuda")
    print(f"{torch.cuda.get_device_name()}: logits {args.rows} x {args.vocab} bf16, {len(WEIGHTS)} weighted targets, {FORM} cap")
    report((*reference_rows(z, targets, weights), *triton_rows(z, targets, weights)), "GB/s moved", "gb_per_s", lambda nbytes, ms: nbytes / ms / 1e6, 2,
           args.out, "bench_loss_kernels.json", {"rows": args.rows, "vocab": args.vocab})


if __name__ == "__main__":
    main()
