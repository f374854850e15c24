"""MLA decoding benchmark: the kit's Triton kernel against PyTorch and FlexAttention, per configuration
in ms, TFLOPS and GB/s, set against this GPU's measured copy bandwidth and bf16 matmul peak.

    python scripts/bench_mla_decode.py --out logs/bench_mla_decode
    python scripts/bench_mla_decode.py --grids gpt2 --batches 1,64 --contexts 1024 --out logs/x

Grids (--grids): `deepseek`, FlashMLA's benchmark shape (128 query heads, latent 512 + rotary 64),
over --batches x --contexts; `gpt2`, the MLA variant of train_gpt2_rtx4090_optim.py (12 heads,
latent 256 + rotary 32), over --batches x --gpt2-contexts. Every sequence holds `context` tokens
in 64-token pages drawn in shuffled order from one pool; --s-q new tokens per sequence.

Implementations:
- triton: kit/modeling/mla_decode.py (the block table walked in the kernel; split-K + combine);
  --tile-variants adds the same kernel with other tiles, e.g. "BLOCK_M=64,BLOCK_DV=128".
- torch: the pages gathered into one tensor, then scores, softmax and mixing as two batched
  matmuls in bf16 (softmax in fp32): what kit/tools/inference.py does without the kernel.
- flex: FlexAttention (compiled) on the already gathered cache, heads sharing one key/value head
  (enable_gqa); neither the gather nor the block mask is timed, which favours it. Only for
  --flex-batches (each shape compiles anew).

FLOPs per call: b * h * s_q * 2 * s_k * (d_qk + d_v) (FlashMLA's count). Bytes: the queries, each
sequence's cache and the output, once. Times: triton.testing.do_bench (the L2 cache flushed
between runs), median. Writes bench_mla_decode.{json,csv,md} and three PNGs into --out: TFLOPS by
run, GB/s by run, and GB/s against context length per implementation (at --plot-batch).
On a CPU (TRITON_INTERPRET=1) it runs the same code once per row, untimed in any useful sense:
a check that the script works, not a measurement.
"""

import argparse
import csv
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.core import hw  # noqa: E402
from kit.modeling import mla_decode  # noqa: E402

GRIDS = {"deepseek": {"heads": 128, "latent": 512, "rope": 64}, "gpt2": {"heads": 12, "latent": 256, "rope": 32}}
PAGE = 64


def int_list(text: str) -> list:
    return [int(x) for x in text.split(",") if x]


def tile_variants(text: str) -> list:
    """'BLOCK_M=64,BLOCK_DV=128;BLOCK_M=32' -> [{'BLOCK_M': 64, 'BLOCK_DV': 128}, {'BLOCK_M': 32}]."""
    return [{k: int(v) for k, v in (item.split("=") for item in variant.split(","))} for variant in text.split(";") if variant]


def paged_inputs(batch, s_q, heads, latent, rope, context, device, dtype, seed=0):
    """Queries, a shuffled page pool holding `context` tokens per sequence, the block table and lengths."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    per = math.ceil(context / PAGE)
    table = torch.randperm(batch * per, generator=g).view(batch, per).to(torch.int32).to(device)
    cache = torch.randn(batch * per, PAGE, latent + rope, generator=g, dtype=torch.float32).to(device, dtype)  # FlashMLA's layout: one 576-wide row
    q = torch.randn(batch, s_q, heads, latent + rope, generator=g, dtype=torch.float32).to(device, dtype)
    lengths = torch.full((batch,), context, dtype=torch.int32, device=device)
    return q, cache[..., :latent], cache[..., latent:], table, lengths


def torch_decode(q, latent_cache, rope_cache, table, lengths, scale):
    """Gather the pages, then two batched matmuls (what kit/tools/inference.py does without the kernel)."""
    batch, s_q, heads, _ = q.shape
    length = int(lengths.max())
    keys = torch.cat([mla_decode.gather_pages(latent_cache, table, length), mla_decode.gather_pages(rope_cache, table, length)], dim=-1)
    scores = q.reshape(batch, s_q * heads, -1) @ keys.transpose(1, 2)  # (B, s_q*H, L)
    if s_q > 1:
        seen = torch.arange(length, device=q.device)[None, :] <= (lengths[:, None] - s_q + torch.arange(s_q, device=q.device))[..., None]
        scores = scores.view(batch, s_q, heads, length).masked_fill(~seen[:, :, None], float("-inf")).view(batch, s_q * heads, length)
    weights = (scores.float() * scale).softmax(-1).to(q.dtype)
    return (weights @ keys[..., :latent_cache.size(-1)]).view(batch, s_q, heads, -1)


def flex_decoder(s_q: int):
    """FlexAttention over the gathered cache: (q, keys, values, lengths, scale) -> a call to time,
    (B, s_q, H, latent); the block mask is built once per configuration, outside the timing."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    compiled = torch.compile(flex_attention)

    def prepare(q, keys, values, lengths, scale):
        batch, length = q.size(0), keys.size(1)

        def visible(b, h, q_idx, kv_idx):
            return kv_idx <= lengths[b] - s_q + q_idx

        mask = create_block_mask(visible, batch, None, s_q, length, device=q.device)
        return lambda: compiled(q.transpose(1, 2), keys[:, None], values[:, None], block_mask=mask, scale=scale,
                                enable_gqa=True).transpose(1, 2)
    return prepare


def timer(device):
    """ms of one call: do_bench's median on CUDA (L2 flushed between runs); one timed call elsewhere."""
    if device.type == "cuda":
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")

    def once(fn):
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    return once


def gpu_limits(device, measure) -> dict:
    """This GPU's copy bandwidth (a 2 GiB device-to-device copy, read + write) and bf16 matmul peak
    (8192^3), measured here; on a CPU: none."""
    if device.type != "cuda":
        return {"copy_gb_s": None, "bf16_tflops": None}
    x = torch.empty(1 << 30, dtype=torch.bfloat16, device=device)
    y = torch.empty_like(x)
    copy_ms = measure(lambda: y.copy_(x))
    del x, y
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device=device)
    mm_ms = measure(lambda: a @ b)
    return {"copy_gb_s": 2 * (1 << 31) / copy_ms / 1e6, "bf16_tflops": 2 * 8192 ** 3 / mm_ms / 1e9}


def bench_row(grid, batch, context, args, device, dtype, measure, flex):
    shape = GRIDS[grid]
    heads, latent, rope = shape["heads"], shape["latent"], shape["rope"]
    q, latent_cache, rope_cache, table, lengths = paged_inputs(batch, args.s_q, heads, latent, rope, context, device, dtype)
    scale = (latent + rope) ** -0.5
    flops = mla_decode.decode_flops(batch, args.s_q, heads, context, latent, rope)
    nbytes = mla_decode.decode_bytes(batch, args.s_q, heads, context, latent, rope, element=q.element_size())
    expected = torch_decode(q, latent_cache, rope_cache, table, lengths, scale).float()
    impls = {"triton": lambda: mla_decode.mla_decode(q, latent_cache, rope_cache, table, lengths, scale)}
    for variant in args.tile_variants:
        name = "triton[" + ",".join(f"{k}={v}" for k, v in variant.items()) + "]"
        impls[name] = lambda variant=variant: mla_decode.mla_decode(q, latent_cache, rope_cache, table, lengths, scale, tiles=variant)
    impls["torch"] = lambda: torch_decode(q, latent_cache, rope_cache, table, lengths, scale)
    if flex is not None and batch in args.flex_batches and grid == "gpt2":
        keys = torch.cat([mla_decode.gather_pages(latent_cache, table, context), mla_decode.gather_pages(rope_cache, table, context)], dim=-1)
        impls["flex"] = flex(q, keys, keys[..., :latent], lengths, scale)
    rows = []
    for impl, fn in impls.items():
        row = {"grid": grid, "impl": impl, "batch": batch, "s_q": args.s_q, "heads": heads, "latent": latent, "rope": rope,
               "context": context, "flops": flops, "bytes": nbytes}
        try:
            err = (fn().float() - expected).abs().max().item()
            ms = measure(fn)
            row.update(ms=ms, tflops=flops / ms / 1e9, gb_s=nbytes / ms / 1e6, max_abs_diff_vs_torch=err)
        except Exception as e:  # a path that does not apply to this shape says why, the others go on
            row.update(ms=None, tflops=None, gb_s=None, error=f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
        rows.append(row)
        shown = f"{row['ms']:.3f} ms {row['tflops']:7.1f} TFLOPS {row['gb_s']:7.0f} GB/s" if row["ms"] else row["error"]
        print(f"{grid:8s} b={batch:3d} ctx={context:6d} {impl:28s} {shown}", flush=True)
    del q, latent_cache, rope_cache, table, expected
    return rows


def classify(rows, limits):
    """Each row's fraction of the copy bandwidth and of the bf16 peak, and whether its arithmetic
    intensity puts it under the roofline's ridge (memory-bound) or over it (compute-bound)."""
    if not limits["copy_gb_s"]:
        return
    ridge = limits["bf16_tflops"] * 1e12 / (limits["copy_gb_s"] * 1e9)  # FLOPs per byte
    for r in rows:
        r["bound"] = "memory" if r["flops"] / r["bytes"] < ridge else "compute"
        if r["ms"]:
            r["of_copy_bandwidth"] = r["gb_s"] / limits["copy_gb_s"]
            r["of_bf16_peak"] = r["tflops"] / limits["bf16_tflops"]


def markdown(rows, limits, device_name) -> str:
    lines = [f"Device: {device_name}"]
    if limits["copy_gb_s"]:
        lines.append(f"Measured limits: copy bandwidth {limits['copy_gb_s']:,.0f} GB/s (2 GiB device-to-device copy), "
                     f"bf16 matmul {limits['bf16_tflops']:,.0f} TFLOPS (8192^3).")
    lines += ["", "| grid | batch | context | impl | ms | TFLOPS | GB/s | of copy BW | of bf16 peak | bound | max diff vs torch |",
              "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["ms"]:
            fractions = (f"{r['of_copy_bandwidth']:.0%} | {r['of_bf16_peak']:.0%}" if "of_copy_bandwidth" in r else "- | -")
            lines.append(f"| {r['grid']} | {r['batch']} | {r['context']} | {r['impl']} | {r['ms']:.3f} | {r['tflops']:.1f} | {r['gb_s']:,.0f} | "
                         f"{fractions} | {r.get('bound', '-')} | {r['max_abs_diff_vs_torch']:.3g} |")
        else:
            lines.append(f"| {r['grid']} | {r['batch']} | {r['context']} | {r['impl']} | - | - | - | - | - | {r.get('bound', '-')} | {r['error']} |")
    lines += ["", summary(rows)]
    return "\n".join(lines) + "\n"


def summary(rows) -> str:
    """The kernel's best fraction of the copy bandwidth where memory-bound and of the peak where
    compute-bound, and its median speed-up over the torch path, per grid."""
    out = []
    for grid in sorted({r["grid"] for r in rows}):
        mine = {(r["batch"], r["context"]): r for r in rows if r["grid"] == grid and r["impl"] == "triton" and r["ms"]}
        base = {(r["batch"], r["context"]): r for r in rows if r["grid"] == grid and r["impl"] == "torch" and r["ms"]}
        ups = [base[k]["ms"] / mine[k]["ms"] for k in mine if k in base]
        text = f"{grid}: triton vs torch median {statistics.median(ups):.2f}x over {len(ups)} configurations" if ups else f"{grid}: -"
        memory = [r.get("of_copy_bandwidth") for r in mine.values() if r.get("bound") == "memory"]
        compute = [r.get("of_bf16_peak") for r in mine.values() if r.get("bound") == "compute"]
        if memory:
            text += f"; memory-bound: best {max(memory):.0%} of the copy bandwidth (median {statistics.median(memory):.0%})"
        if compute:
            text += f"; compute-bound: best {max(compute):.0%} of the bf16 peak (median {statistics.median(compute):.0%})"
        out.append(text + ".")
    return "\n".join(out)


def plots(rows, limits, out: Path, plot_batch: int):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    impls = list(dict.fromkeys(r["impl"] for r in rows))
    configs = list(dict.fromkeys((r["grid"], r["batch"], r["context"]) for r in rows))
    for metric, label, limit, name in (("tflops", "TFLOPS", limits["bf16_tflops"], "mla_decode_tflops.png"),
                                       ("gb_s", "GB/s", limits["copy_gb_s"], "mla_decode_bandwidth.png")):
        fig, ax = plt.subplots(figsize=(10, 4.5))
        for impl in impls:
            points = [(configs.index((r["grid"], r["batch"], r["context"])), r[metric]) for r in rows if r["impl"] == impl and r["ms"]]
            if points:
                ax.plot(*zip(*points), "o-", ms=3, label=impl)
        if limit:
            ax.axhline(limit, color="k", ls="--", lw=1, label=f"measured {'bf16 matmul peak' if metric == 'tflops' else 'copy bandwidth'}")
        ax.set_xlabel("run (configuration index: " + ", ".join(sorted({g for g, _, _ in configs})) + " grids, batch-major)")
        ax.set_ylabel(label)
        ax.set_title(f"MLA decode: {label} per run")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for grid in sorted({r["grid"] for r in rows}):
        for impl in impls:
            points = sorted((r["context"], r["gb_s"]) for r in rows if r["grid"] == grid and r["impl"] == impl and r["batch"] == plot_batch and r["ms"])
            if len(points) > 1:
                ax.plot(*zip(*points), "o-", ms=3, label=f"{grid} {impl}")
    if limits["copy_gb_s"]:
        ax.axhline(limits["copy_gb_s"], color="k", ls="--", lw=1, label="measured copy bandwidth")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("GB/s")
    ax.set_title(f"MLA decode bandwidth against context, batch {plot_batch}")
    fig.tight_layout()
    fig.savefig(out / "mla_decode_bandwidth_vs_context.png", dpi=110)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", default="deepseek,gpt2")
    parser.add_argument("--batches", type=int_list, default=[1, 8, 32, 64, 128])
    parser.add_argument("--contexts", type=int_list, default=[1024, 4096, 8192, 16384, 32768], help="the deepseek grid's")
    parser.add_argument("--gpt2-contexts", type=int_list, default=[1024, 4096, 16384])
    parser.add_argument("--s-q", type=int, default=1, help="new tokens per sequence (1 or 2 as FlashMLA's benchmark)")
    parser.add_argument("--tile-variants", type=tile_variants, default=[], help="'KEY=V,KEY=V;...' other tiles of the kernel to time")
    parser.add_argument("--flex-batches", type=int_list, default=[1, 64], help="batches of the gpt2 grid that FlexAttention runs")
    parser.add_argument("--no-flex", action="store_true")
    parser.add_argument("--plot-batch", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default="logs/bench_mla_decode")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if why := mla_decode.why_not(device):
        print(f"bench_mla_decode.py: error: {why} (on a CPU, set TRITON_INTERPRET=1 for a check run)", file=sys.stderr)
        return 2
    grids = [g for g in args.grids.split(",") if g]
    if unknown := [g for g in grids if g not in GRIDS]:
        print(f"bench_mla_decode.py: error: unknown grid(s) {', '.join(unknown)}; known: {', '.join(GRIDS)}", file=sys.stderr)
        return 2
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32  # the interpreter computes in numpy, which has no bf16
    measure = timer(device)
    limits = gpu_limits(device, measure)
    flex = None if args.no_flex or device.type != "cuda" else flex_decoder(args.s_q)
    rows = []
    for grid in grids:
        for batch in args.batches:
            for context in (args.contexts if grid == "deepseek" else args.gpt2_contexts):
                rows += bench_row(grid, batch, context, args, device, dtype, measure, flex)
    classify(rows, limits)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = hw.device_name(device)
    (out / "bench_mla_decode.json").write_text(json.dumps({"device": name, "limits": limits, "args": {k: v for k, v in vars(args).items()},
                                                           "rows": rows}, indent=1) + "\n")
    with open(out / "bench_mla_decode.csv", "w", newline="") as f:
        fields = list(dict.fromkeys(k for r in rows for k in r))
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    (out / "bench_mla_decode.md").write_text(markdown(rows, limits, name))
    plots(rows, limits, out, args.plot_batch)
    print(summary(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
