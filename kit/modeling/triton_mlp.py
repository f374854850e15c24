"""The ReLU^2 MLP, y = relu(x W1^T)^2 W2^T, with its elementwise work inside two Triton matmuls (the public
records of 2026-01-10 and 2026-06-11 fused it this way; this is our own kernel).

The plain path writes the up projection's output h, reads it back to square it, and keeps h for the
backward; the backward writes dy W2, reads it back with h, and writes dh. Here:
- forward: one kernel computes x W1^T and writes only a = relu(h)^2, squared from the fp32 accumulator;
  y = a W2^T stays with cuBLAS. The backward keeps x, a and the weights, not h.
- backward: relu(h) = sqrt(a), so dh = (dy W2) * 2 sqrt(a): a second kernel computes dy W2 and writes dh
  from its epilogue. dW2 = dy^T a, dx = dh W1 and dW1 = dh^T x stay with cuBLAS.
Both are one kernel (`_matmul_epilogue_kernel`) with the epilogue as a compile-time switch, wrapped as
torch.library custom ops so a compiled model calls them as they are. On sm90 (H100/H200) the kernel loads its
tiles through tensor descriptors (TMA: one instruction copies a tile, with no per-element addresses) where the
tensors allow it; with per-element pointer loads its products ran 29-73% slower there than cuBLAS's product of
the same size, about what the fused ReLU^2 passes save (records/NOT_RUN.md). Elsewhere (sm86/sm89, which have no TMA) it loads through
pointers; `LOADS` picks the path by hand (a benchmark compares both). On a CPU they run under Triton's
interpreter (TRITON_INTERPRET=1, as the tests do); elsewhere without Triton `relu2_mlp` takes the same
products in PyTorch (the same values up to rounding), so a model with it runs on any machine.
"""


import torch

from kit.core import gpus
from kit.modeling.triton_loss import autotune_caching, available, triton

INTERPRETER_BLOCKS = (32, 32, 32)  # (BLOCK_M, BLOCK_N, BLOCK_K) under the interpreter; on a GPU autotuning picks below
# (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps): large tiles for sm90's 228 KB of shared memory per block, and tiles that
# need at most 64 KB for the ~100 KB of sm86/sm89 (an RTX 3090/4090), so every config the card may pick fits it
LARGE_TILES = [(128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 128, 64, 3, 4), (128, 128, 32, 4, 4)]
SMALL_TILES = [(128, 128, 64, 3, 8), (128, 128, 32, 4, 4), (128, 128, 64, 2, 8), (64, 64, 64, 4, 4), (128, 64, 32, 4, 4)]
GROUP_M = 8  # programs in a column of output tiles that run together, so the B tiles they share stay in L2

# sm90 with TMA loads: the tiles of A and B in shared memory for each stage (at most (128 + 256) x 64 x 2 bytes x 3 =
# 144 KB of the 227 KB), the epilogue straight from registers
TMA_TILES = [(128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 128, 64, 4, 8), (128, 128, 64, 3, 4), (128, 256, 64, 4, 8)]
LOADS = "auto"  # "auto": TMA where the GPU and tensors allow it, else pointers; "pointers" or "tma" forces one (tma also under the interpreter)

RELU_SQUARE, TIMES_TWICE_SQRT = 0, 1  # the epilogues

TensorDescriptor = None  # Triton's host-side tensor descriptor, where this Triton has one (below)

if triton is not None:
    import triton.language as tl

    @triton.jit
    def _matmul_epilogue_kernel(a_ptr, b_ptr, aux_ptr, c_ptr, M, N, K, stride_am, stride_b, stride_cm,
                                B_ROWS_ARE_N: tl.constexpr, EPILOGUE: tl.constexpr, EVEN: tl.constexpr, INTERPRETED: tl.constexpr,
                                TMA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr):
        """c (M, N) = epilogue(a @ b): relu(.)^2, or (.) * 2 sqrt(aux) for aux laid out as c. Rows are contiguous:
        a (M, K) with row stride stride_am; b (N, K) (B_ROWS_ARE_N, a Linear's weight: the product takes its transpose)
        or (K, N), with row stride stride_b; c and aux with row stride stride_cm. With TMA, a_ptr and b_ptr are tensor
        descriptors of a and b whose blocks are (BLOCK_M, BLOCK_K) and (BLOCK_N, BLOCK_K) or (BLOCK_K, BLOCK_N); their
        loads fill what lies outside the tensors with zeros."""
        pid = tl.program_id(0)
        tiles_m, tiles_n = tl.cdiv(M, BLOCK_M), tl.cdiv(N, BLOCK_N)
        group_size = GROUP * tiles_n
        first_m = (pid // group_size) * GROUP
        rows_in_group = tl.minimum(tiles_m - first_m, GROUP)
        pid_m = first_m + (pid % group_size) % rows_in_group
        pid_n = (pid % group_size) // rows_in_group
        rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        if TMA:
            acc = _product_tma(a_ptr, b_ptr, K, pid_m * BLOCK_M, pid_n * BLOCK_N, B_ROWS_ARE_N, INTERPRETED, BLOCK_M, BLOCK_N, BLOCK_K)
        else:
            acc = _product_pointers(a_ptr, b_ptr, M, N, K, stride_am, stride_b, rows, cols, B_ROWS_ARE_N, EVEN, INTERPRETED,
                                    BLOCK_M, BLOCK_N, BLOCK_K)
        offsets = rows.to(tl.int64)[:, None] * stride_cm + cols[None, :]
        inside = (rows[:, None] < M) & (cols[None, :] < N)
        if EPILOGUE == 0:
            positive = tl.maximum(acc, 0.0)
            out = positive * positive
        else:
            aux = tl.load(aux_ptr + offsets, mask=inside, other=0.0).to(tl.float32)
            out = acc * 2.0 * tl.sqrt(aux)
        tl.store(c_ptr + offsets, out.to(c_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=inside)

    @triton.jit
    def _product_pointers(a_ptr, b_ptr, M, N, K, stride_am, stride_b, rows, cols, B_ROWS_ARE_N: tl.constexpr, EVEN: tl.constexpr,
                          INTERPRETED: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """The (BLOCK_M, BLOCK_N) fp32 tile of a @ b at rows x cols, its tiles loaded element by element."""
        ks = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + rows.to(tl.int64)[:, None] * stride_am + ks[None, :]
        if B_ROWS_ARE_N:
            b_ptrs = b_ptr + ks[:, None] + cols.to(tl.int64)[None, :] * stride_b
            b_step = BLOCK_K
        else:
            b_ptrs = b_ptr + ks[:, None] * stride_b + cols[None, :]
            b_step = BLOCK_K * stride_b
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            if EVEN:
                a = tl.load(a_ptrs)
                b = tl.load(b_ptrs)
            else:
                left = K - k * BLOCK_K
                a = tl.load(a_ptrs, mask=(rows[:, None] < M) & (ks[None, :] < left), other=0.0)
                b = tl.load(b_ptrs, mask=(ks[:, None] < left) & (cols[None, :] < N), other=0.0)
            if INTERPRETED:  # the interpreter's dot of two bf16 tiles is wrong (numpy has no bf16): multiply their fp32 values
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc)
            a_ptrs += BLOCK_K
            b_ptrs += b_step
        return acc

    @triton.jit
    def _product_tma(a_desc, b_desc, K, first_row, first_col, B_ROWS_ARE_N: tl.constexpr, INTERPRETED: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
        """The same tile, its tiles loaded whole by tensor descriptors (TMA on sm90)."""
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in range(0, tl.cdiv(K, BLOCK_K)):
            a = a_desc.load([first_row, k * BLOCK_K])
            if B_ROWS_ARE_N:
                b = b_desc.load([first_col, k * BLOCK_K]).T
            else:
                b = b_desc.load([k * BLOCK_K, first_col])
            if INTERPRETED:
                a, b = a.to(tl.float32), b.to(tl.float32)
            acc = tl.dot(a, b, acc)
        return acc

    def _even(args) -> bool:
        return args["M"] % args["BLOCK_M"] == 0 and args["N"] % args["BLOCK_N"] == 0 and args["K"] % args["BLOCK_K"] == 0

    _matmul_kernel = triton.heuristics({"EVEN": _even})(_matmul_epilogue_kernel)
    def _descriptor_blocks(nargs) -> None:
        """Autotuning's hook before each launch with TMA: the descriptors' blocks become the config's tiles."""
        block_m, block_n, block_k = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
        nargs["a_ptr"].block_shape = [block_m, block_k]
        nargs["b_ptr"].block_shape = [block_n, block_k] if nargs["B_ROWS_ARE_N"] else [block_k, block_n]

    def _tuned(tiles, hook=None):
        """The kernel autotuned over these tiles, timed once per (M, N, K, epilogue) at its first call, on disk too
        where this Triton can (as kit.modeling.triton_loss). M is in the key (a run's rows per micro-batch are fixed):
        on an H200 the op ran 15-18% slower at 65,536 rows than the best tile there, after a test had tuned it at
        4,096 rows, and the disk cache keeps one choice per key."""
        configs = [triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k}, num_stages=s, num_warps=w, pre_hook=hook) for m, n, k, s, w in tiles]
        return triton.autotune(configs, key=["M", "N", "K", "B_ROWS_ARE_N", "EPILOGUE"], **autotune_caching())(_matmul_kernel)

    _TUNED = {False: _tuned(LARGE_TILES), True: _tuned(SMALL_TILES), "tma": _tuned(TMA_TILES, _descriptor_blocks)}
    try:
        from triton.tools.tensor_descriptor import TensorDescriptor
    except ImportError:  # a Triton without host-side tensor descriptors: pointer loads only
        pass


def tma_loads(device, *tensors) -> bool:
    """Whether the kernels load their tiles through tensor descriptors here: on sm90/sm100 (H100, H200, B200: TMA and
    227 KB of shared memory for TMA_TILES; not an sm86/sm89 card, a run emulating one, nor sm120's ~100 KB), where
    every tensor starts and every row stride falls on 16 bytes (TMA's rule); `LOADS` overrides."""
    if LOADS != "auto" or triton is None:
        return LOADS == "tma"
    cap = gpus.capability(torch.device(device))
    return (TensorDescriptor is not None and cap is not None and (9, 0) <= tuple(cap) < (11, 0)
            and all(t.data_ptr() % 16 == 0 and t.stride(0) * t.element_size() % 16 == 0 for t in tensors))


def describe_loads(device) -> str:
    """Which loads the fused MLP's kernels take on this device, for the run's log."""
    return "TMA tile loads (sm90)" if tma_loads(device) else "pointer loads"


def _launch(a: torch.Tensor, b: torch.Tensor, b_rows_are_n: bool, aux, epilogue: int) -> torch.Tensor:
    """epilogue(a @ b) for a (M, K) and b (N, K) if b_rows_are_n (a @ b^T, then) else (K, N), into a fresh (M, N)
    tensor of a's dtype."""
    a, b = a.contiguous(), b.contiguous()
    m, k = a.shape
    n = b.size(0) if b_rows_are_n else b.size(1)
    c = torch.empty(m, n, dtype=a.dtype, device=a.device)
    aux = c if aux is None else aux.contiguous()
    tma = tma_loads(a.device, a, b)
    sources = (TensorDescriptor.from_tensor(a, [1, 1]), TensorDescriptor.from_tensor(b, [1, 1])) if tma else (a, b)  # blocks: set below
    args = (*sources, aux, c, m, n, k, a.stride(0), b.stride(0), c.stride(0))
    flags = dict(B_ROWS_ARE_N=b_rows_are_n, EPILOGUE=epilogue, GROUP=GROUP_M, TMA=tma)
    if a.device.type != "cuda":
        block_m, block_n, block_k = INTERPRETER_BLOCKS
        if tma:
            _descriptor_blocks({"a_ptr": sources[0], "b_ptr": sources[1], "B_ROWS_ARE_N": b_rows_are_n,
                                "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k})
        grid = (triton.cdiv(m, block_m) * triton.cdiv(n, block_n),)
        _matmul_kernel[grid](*args, **flags, INTERPRETED=True, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_K=block_k)
    else:
        small = gpus.small_shared_memory(gpus.capability(a.device))  # the card's (or the one --emulate-gpu runs as)
        tuned = _TUNED["tma" if tma else small]
        tuned[lambda meta: (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)](*args, **flags, INTERPRETED=False)
    return c


@torch.library.custom_op("kit::relu_square_up", mutates_args=())
def relu_square_up(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """relu(x @ w^T)^2 for x (M, K), w (N, K): the up projection and its square, written once."""
    return _launch(x, w, True, None, RELU_SQUARE)


@relu_square_up.register_fake
def _(x, w):
    return x.new_empty(x.size(0), w.size(0))


@torch.library.custom_op("kit::relu_square_up_grad", mutates_args=())
def relu_square_up_grad(dy: torch.Tensor, w_down: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """d(loss)/dh = (dy @ w_down) * 2 sqrt(a) for dy (M, C), w_down (C, N), a = relu(h)^2 (M, N)."""
    return _launch(dy, w_down, False, a, TIMES_TWICE_SQRT)


@relu_square_up_grad.register_fake
def _(dy, w_down, a):
    return dy.new_empty(dy.size(0), w_down.size(1))


def _up(x, w):
    if available(x.device):
        return relu_square_up(x, w)
    return torch.relu(x @ w.t()).square()


def _up_grad(dy, w_down, a):
    if available(dy.device):
        return relu_square_up_grad(dy, w_down, a)
    return (dy @ w_down) * 2 * a.sqrt()


class FusedReluSquareMLP(torch.autograd.Function):
    """y = relu(x w_up^T)^2 w_down^T in the dtype a plain Linear would give (autocast's on a GPU), keeping
    x, a = relu(h)^2 and the weights for the backward (not h)."""

    @staticmethod
    def forward(ctx, x, w_up, w_down):
        from kit.modeling.fp8 import linear_output_dtype

        dtype = linear_output_dtype(x)
        flat = x.reshape(-1, x.size(-1)).to(dtype).contiguous()
        w1, w2 = w_up.to(dtype), w_down.to(dtype)
        a = _up(flat, w1)
        ctx.save_for_backward(flat, w1, w2, a)
        ctx.weight_dtypes = (w_up.dtype, w_down.dtype)
        return (a @ w2.t()).view(*x.shape[:-1], w2.size(0))

    @staticmethod
    def backward(ctx, grad):
        flat, w1, w2, a = ctx.saved_tensors
        dy = grad.reshape(-1, grad.size(-1)).to(flat.dtype)
        dh = _up_grad(dy, w2, a)
        grad_x = (dh @ w1).view(*grad.shape[:-1], w1.size(1))
        grad_w_up = (dh.t() @ flat).to(ctx.weight_dtypes[0])
        grad_w_down = (dy.t() @ a).to(ctx.weight_dtypes[1])
        return grad_x, grad_w_up, grad_w_down


def relu2_mlp(x: torch.Tensor, w_up: torch.Tensor, w_down: torch.Tensor) -> torch.Tensor:
    """The ReLU^2 MLP of x (..., width) with the fused kernels (or their PyTorch equivalent without Triton)."""
    return FusedReluSquareMLP.apply(x, w_up, w_down)


def kernel_builds(small_shared_memory: bool = True, tma: bool = False):
    """(name, kernel, signature, constexprs, num_warps, num_stages) for every configuration the card's autotuning may
    pick, in the record's types (bf16): what a shared-memory audit compiles for it (scripts/audit_shared_memory.py).
    tma: the TMA tiles too (sm90), their tiles loaded through tensor descriptors."""
    types = {"a_ptr": "*bf16", "b_ptr": "*bf16", "aux_ptr": "*bf16", "c_ptr": "*bf16", "M": "i32", "N": "i32", "K": "i32",
             "stride_am": "i32", "stride_b": "i32", "stride_cm": "i32"}
    kinds = [(False, tile) for tile in (SMALL_TILES if small_shared_memory else LARGE_TILES)] + [(True, tile) for tile in TMA_TILES if tma]
    for with_tma, (block_m, block_n, block_k, stages, warps) in kinds:
        for rows_are_n, epilogue, what in ((True, RELU_SQUARE, "up + ReLU^2"), (False, TIMES_TWICE_SQRT, "its gradient")):
            loads = {}
            if with_tma:  # the descriptors' blocks are part of the kernel's signature
                b_block = f"[{block_n},{block_k}]" if rows_are_n else f"[{block_k},{block_n}]"
                loads = {"a_ptr": f"tensordesc<bf16[{block_m},{block_k}]>", "b_ptr": f"tensordesc<bf16{b_block}>"}
            signature = {name: {**types, **loads}.get(name, "constexpr") for name in _matmul_epilogue_kernel.arg_names}
            yield (f"MLP {what} (BLOCK {block_m}x{block_n}x{block_k}, {stages} stages, {warps} warps{', TMA' if with_tma else ''})",
                   _matmul_epilogue_kernel, signature,
                   {"B_ROWS_ARE_N": rows_are_n, "EPILOGUE": epilogue, "EVEN": True, "INTERPRETED": False, "TMA": with_tma,
                    "BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_K": block_k, "GROUP": GROUP_M},
                   warps, stages)
