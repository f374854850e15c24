"""Time the fused ReLU^2 MLP's kernels (kit/modeling/triton_mlp.py) against cuBLAS and the compiled plain MLP, at the
record script's shapes, on a CUDA GPU.

    python3 scripts/bench_mlp_kernels.py [--rows 65536] [--width 768] [--out DIR]

Rows: the up product alone in cuBLAS (the floor a fused forward can reach), the compiled plain MLP forward and
forward + backward, each Triton tile config of the card's list for both kernels, the autotuned custom ops, and the
fused MLP forward + backward; on sm90 all of it twice, with TMA loads first, then with pointer loads. Each prints milliseconds per call and the TFLOP/s of its matrix products, so a tile far
below cuBLAS shows where a fused kernel loses what its epilogue saves. Writes bench_mlp_kernels.json.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench_loss_kernels import report, time_ms  # noqa: E402

from kit.core import gpus  # noqa: E402
from kit.modeling import triton_mlp  # noqa: E402


def plain_mlp(x, w_up, w_down):
    return torch.relu(x @ w_up.t()).square() @ w_down.t()


def reference_rows(x, w_up, w_down, flops):
    yield "cuBLAS up product alone", time_ms(lambda: x @ w_up.t()), flops
    forward = torch.compile(plain_mlp)
    yield "plain MLP forward (compiled)", time_ms(lambda: forward(x, w_up, w_down)), 2 * flops
    params = [w.detach().clone().requires_grad_() for w in (w_up, w_down)]
    inputs = x.detach().clone().requires_grad_()
    yield "plain MLP forward + backward (compiled)", time_ms(lambda: forward(inputs, *params).sum().backward()), 6 * flops


def tile_rows(x, w_up, w_down, flops, tiles, tma: bool):
    """Each tile of the list for both kernels, launched directly; with tma, their tiles loaded through descriptors."""
    m, k = x.shape
    n = w_up.size(0)
    a = torch.empty(m, n, dtype=x.dtype, device=x.device)
    dy = torch.randn_like(x)
    for block_m, block_n, block_k, stages, warps in tiles:
        grid = (triton_mlp.triton.cdiv(m, block_m) * triton_mlp.triton.cdiv(n, block_n),)
        tile = dict(INTERPRETED=False, TMA=tma, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k, GROUP=triton_mlp.GROUP_M,
                    num_stages=stages, num_warps=warps)
        name = f"{block_m}x{block_n}x{block_k} stages={stages} warps={warps}{' TMA' if tma else ''}"
        up_sources, grad_sources = (x, w_up), (dy, w_down)
        if tma:
            up_sources = (triton_mlp.TensorDescriptor.from_tensor(x, [block_m, block_k]), triton_mlp.TensorDescriptor.from_tensor(w_up, [block_n, block_k]))
            grad_sources = (triton_mlp.TensorDescriptor.from_tensor(dy, [block_m, block_k]), triton_mlp.TensorDescriptor.from_tensor(w_down, [block_k, block_n]))
        up = lambda: triton_mlp._matmul_kernel[grid](*up_sources, a, a, m, n, k, k, k, n, B_ROWS_ARE_N=True,
                                                     EPILOGUE=triton_mlp.RELU_SQUARE, **tile)
        yield f"triton up + relu^2 {name}", time_ms(up), flops
        grad = lambda: triton_mlp._matmul_kernel[grid](*grad_sources, a, torch.empty_like(a), m, n, k, k, n, n, B_ROWS_ARE_N=False,
                                                       EPILOGUE=triton_mlp.TIMES_TWICE_SQRT, **tile)
        yield f"triton dh {name}", time_ms(grad), flops


def op_rows(x, w_up, w_down, flops, loads: str):
    """The autotuned custom ops and the fused MLP's forward + backward, with the kernels' loads set to `loads`."""
    triton_mlp.LOADS = loads
    a = triton_mlp.relu_square_up(x, w_up)
    dy = torch.randn_like(x)
    yield f"triton up + relu^2 (autotuned op, {loads} loads)", time_ms(lambda: triton_mlp.relu_square_up(x, w_up)), flops
    yield f"triton dh (autotuned op, {loads} loads)", time_ms(lambda: triton_mlp.relu_square_up_grad(dy, w_down, a)), flops
    params = [w.detach().clone().requires_grad_() for w in (w_up, w_down)]
    inputs = x.detach().clone().requires_grad_()
    yield f"fused MLP forward + backward ({loads} loads)", time_ms(lambda: triton_mlp.relu2_mlp(inputs, *params).sum().backward()), 6 * flops
    triton_mlp.LOADS = "auto"


def triton_rows(x, w_up, w_down, flops):
    """On sm90 the TMA tiles and the ops with TMA loads first (the newer path), then the card's pointer tiles and the
    ops with pointer loads."""
    if triton_mlp.tma_loads(x.device, x, w_up, w_down):
        yield from tile_rows(x, w_up, w_down, flops, triton_mlp.TMA_TILES, tma=True)
        yield from op_rows(x, w_up, w_down, flops, "tma")
    tiles = triton_mlp.SMALL_TILES if gpus.small_shared_memory(gpus.capability(x.device)) else triton_mlp.LARGE_TILES
    yield from tile_rows(x, w_up, w_down, flops, tiles, tma=False)
    yield from op_rows(x, w_up, w_down, flops, "pointers")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=65536, help="tokens per call: the record script's micro-batch of 4 x 16,384 on an H200")
    parser.add_argument("--width", type=int, default=768, help="model width; the hidden layer is 4x")
    parser.add_argument("--out", default=None, help="folder for bench_mlp_kernels.json")
    args = parser.parse_args()
    if not torch.cuda.is_available() or not triton_mlp.available("cuda"):
        sys.exit("bench_mlp_kernels.py needs a CUDA GPU and Triton")
    g = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(args.rows, args.width, device="cuda", generator=g).bfloat16()
    w_up = (0.02 * torch.randn(4 * args.width, args.width, device="cuda", generator=g)).bfloat16()
    w_down = (0.02 * torch.randn(args.width, 4 * args.width, device="cuda", generator=g)).bfloat16()
    flops = 2 * args.rows * args.width * 4 * args.width  # one of the MLP's products
    print(f"{torch.cuda.get_device_name()}: {args.rows} tokens, width {args.width} -> {4 * args.width}, bf16")
    report((*reference_rows(x, w_up, w_down, flops), *triton_rows(x, w_up, w_down, flops)), "TFLOP/s of its products", "tflops",
           lambda work, ms: work / ms / 1e9, 3, args.out, "bench_mlp_kernels.json", {"rows": args.rows, "width": args.width})


if __name__ == "__main__":
    main()
