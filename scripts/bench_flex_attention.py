"""Time FlexAttention's forward and backward at the record script's attention shapes on a CUDA GPU: its default
kernel options beside candidates (tiles, stages, warps, TMA loads), so each GPU's choice in
kit/modeling/modern.py's flex_kernel_options can rest on a measurement.

    python3 scripts/bench_flex_attention.py [--tokens data/webmix/webmix_val_000000.bin] [--out DIR]

Shapes: micro-batch 4 x 16,384 tokens, 6 heads of 128 (the record on an H200), under the record's block mask
(causal, within documents, the long window of 14 blocks of 128 tokens or the short one of 7) built from real
document boundaries (--tokens, a shard) or, without one, from documents of random length (mean --doc-len). Each
candidate runs with both masks; its row gives milliseconds for one micro-step's attention, forward and forward +
backward, weighted as the 12-layer model attends (4 long-window layers, 7 short; layer 7 has none), and the largest
difference of its output and gradients from the default's, so a fast but wrong choice shows. Writes
bench_flex_attention.json.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_loss_kernels import report, time_ms  # noqa: E402

from kit.modeling.modern import BLOCK, EOT, document_ids, flex_block_mask, flex_kernel_options  # noqa: E402

LONG_LAYERS, SHORT_LAYERS = 4, 7  # the 12-layer model's attention layers by window (layers 0, 4, 8, 11 long; 7 none)

# Candidates beside the default (None: Inductor's choice, or the kit's own on sm86/sm89). Keys as FlexAttention's
# kernel_options take them: fwd_/bwd_ prefixes set one pass's tiles, stages and warps; USE_TMA loads tiles by TMA (sm90).
# Every tile divides the mask's 128-token blocks.
CANDIDATES = {
    "tma": {"USE_TMA": True},
    "fwd 128x128 s2 w8": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 128, "fwd_num_stages": 2, "fwd_num_warps": 8},
    "fwd 64x128 s3 w4": {"fwd_BLOCK_M": 64, "fwd_BLOCK_N": 128, "fwd_num_stages": 3, "fwd_num_warps": 4},
    "fwd 128x64 s4 w8": {"fwd_BLOCK_M": 128, "fwd_BLOCK_N": 64, "fwd_num_stages": 4, "fwd_num_warps": 8},
    "bwd 64x64 s3 w4": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64, "bwd_num_stages": 3, "bwd_num_warps": 4},
    "bwd 64x64 s4 w8": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 64, "bwd_num_stages": 4, "bwd_num_warps": 8},
    "bwd 64x128 s2 w8": {"bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64, "bwd_num_stages": 2, "bwd_num_warps": 8},
    "bwd 32x64 s4 w4": {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 32, "bwd_num_stages": 4, "bwd_num_warps": 4},
    "bwd 64x128 s3 w8, tma": {"USE_TMA": True, "bwd_BLOCK_M1": 64, "bwd_BLOCK_N1": 128, "bwd_BLOCK_M2": 128, "bwd_BLOCK_N2": 64,
                              "bwd_num_stages": 3, "bwd_num_warps": 8},
}


def document_tokens(args, n: int) -> torch.Tensor:
    """n tokens whose 50256s mark the documents: a shard's first n, or random lengths with mean --doc-len."""
    if args.tokens:
        from kit.data.shards import open_shard

        return torch.from_numpy(open_shard(args.tokens)[:n].astype("int64"))
    g = torch.Generator().manual_seed(0)
    tokens = torch.zeros(n, dtype=torch.int64)
    ends = torch.cumsum(torch.empty(n // 10).exponential_(1.0 / args.doc_len, generator=g).long() + 1, 0)
    tokens[ends[ends < n]] = EOT
    return tokens


def attention_rows(q, k, v, masks, scale, options_by_name, timer=time_ms, attention=None):
    """Per candidate: (name, ms forward, ms forward + backward) of one micro-step (each mask's time times its layers),
    and the largest difference of its output and gradients from the first candidate's. timer(fn) -> ms; attention:
    a stand-in with FlexAttention's arguments (a CPU check of this bookkeeping: FlexAttention has no CPU backward)."""
    from torch.nn.attention.flex_attention import flex_attention

    upstream = torch.randn_like(q)
    reference = None
    for name, options in options_by_name.items():
        torch._dynamo.reset()  # each candidate compiles its own kernels
        attend = attention or torch.compile(flex_attention, dynamic=False)
        forward_ms = backward_ms = 0.0
        results = []
        for window, layers in masks:
            def forward():
                return attend(q, k, v, block_mask=window, scale=scale, kernel_options=options)

            def forward_backward():
                forward().backward(upstream)

            try:
                forward_ms += layers * timer(forward)
                backward_ms += layers * timer(forward_backward)
            except Exception as error:  # a candidate this GPU or this torch cannot build: reported, not fatal
                print(f"{name}: {type(error).__name__}: {str(error).splitlines()[0][:200]}", flush=True)
                break
            for t in (q, k, v):
                t.grad = None
            out = forward()
            out.backward(upstream)
            results += [out.detach().float(), *(t.grad.float() for t in (q, k, v))]
            for t in (q, k, v):
                t.grad = None
        else:
            reference = reference or results
            difference = max((a - b).abs().max().item() for a, b in zip(results, reference))
            yield name, forward_ms, backward_ms, difference


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4, help="sequences per micro-step (the record's micro-batch on an H200)")
    parser.add_argument("--seq-len", type=int, default=16384)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--window-blocks", type=int, default=14, help="the long window in blocks of 128 tokens; short layers take half")
    parser.add_argument("--tokens", default="", help="a token shard whose documents shape the mask (default: random documents)")
    parser.add_argument("--doc-len", type=int, default=1000, help="mean document length without --tokens")
    parser.add_argument("--only", default="", help="comma-separated candidate names (default: all)")
    parser.add_argument("--out", default=None, help="folder for bench_flex_attention.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_flex_attention.py needs a CUDA GPU")
    if args.seq_len % BLOCK:
        sys.exit(f"--seq-len {args.seq_len}: a multiple of {BLOCK}")
    device = torch.device("cuda")
    docs = document_ids(document_tokens(args, args.batch * args.seq_len).view(args.batch, args.seq_len)).to(device)
    masks = [(flex_block_mask(docs, args.window_blocks), LONG_LAYERS), (flex_block_mask(docs, max(1, args.window_blocks // 2)), SHORT_LAYERS)]
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(args.batch, args.heads, args.seq_len, args.head_dim, device=device, generator=g)
               .bfloat16().requires_grad_() for _ in range(3))
    wanted = [name for name in args.only.split(",") if name]
    options = {"default": flex_kernel_options(device), **{name: {**(flex_kernel_options(device) or {}), **o} for name, o in CANDIDATES.items()
                                                          if not wanted or name in wanted}}
    documents = "documents of " + (args.tokens if args.tokens else f"random length (mean {args.doc_len})")
    print(f"{torch.cuda.get_device_name()}: {args.batch} x {args.seq_len} tokens, {args.heads} heads of {args.head_dim}, windows "
          f"{args.window_blocks} and {max(1, args.window_blocks // 2)} blocks, {documents}; ms per micro-step of "
          f"{LONG_LAYERS} long + {SHORT_LAYERS} short layers", flush=True)
    rows, default = [], {}
    for name, forward_ms, backward_ms, difference in attention_rows(q, k, v, masks, 0.12, options):
        default = default or {"forward": forward_ms, "backward": backward_ms}  # the first row measured: the default
        rows += [(f"{name}: forward (max diff from the default {difference:.2e})", forward_ms, default["forward"]),
                 (f"{name}: forward + backward", backward_ms, default["backward"])]
    report(rows, "% of the default's time", "percent_of_default", lambda base_ms, ms: 100 * ms / base_ms, 3, args.out,
           "bench_flex_attention.json", {"batch": args.batch, "seq_len": args.seq_len, "heads": args.heads, "head_dim": args.head_dim,
                                         "window_blocks": args.window_blocks, "documents": documents})

if __name__ == "__main__":
    main()
