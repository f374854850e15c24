"""The soft-capped cross-entropy as two Triton kernels (kit.modeling.losses holds the PyTorch reference).

For logits z (N, V) and capped logits c = softcap(z) (kit.modeling.losses: cap * tanh(z / cap), or
cap * sigmoid((z + 5) / 7.5)):
- stats: one pass over each row gives lse = logsumexp(c) and the row's loss lse - c[target]
  (or the weighted sum over several targets, for multi-token prediction from the same logits).
  c < cap, so exp(c - cap) <= 1 needs no running maximum.
- grad: one pass over (rows x columns) tiles gives d(loss)/dz = (softmax(c) * sum of weights -
  weighted one_hots) * dc/dz times a scale, written in the output dtype (bf16, or e5m2 for the
  FP8 head). tanh comes from one exp (tanh(u) = 1 - 2 / (exp(2u) + 1)) instead of libdevice's tanh.
- stats and grad in one kernel (as the public record of 2026-04-04, #79 of its table), for the FP8
  head, whose gradient's scale is known in the forward: each program takes one row, its statistics,
  then its gradient while the row is still in L2 (100 KB at V = 50,304), so the logits are read
  from memory once instead of twice and not kept for the backward (the e5m2 gradient is, at half
  their size). Off until measured (--loss-one-pass).

Measured on an H200 at the speedrun's micro-batch, 98,304 x 50,304 bf16 logits
(records/2026-11-29_h200_loss_kernels): stats 4.1 ms against 12.3 ms for the compiled PyTorch
code; the e5m2 gradient 7.0 ms, against 16.4 ms for the compiled code with its transposed copy
(the FP8 weight-gradient product needs both layouts; the copy is ~4.4 ms). Writing the
transposed layout from this kernel as well was slower (21 ms: scattered stores), so it does not.
The speedrun's step went from 757 to 700 ms.

Both kernels are wrapped as torch.library custom ops, so a compiled model calls them as they are.
On a CPU they run only under Triton's interpreter (TRITON_INTERPRET=1), which the tests use.
"""

import inspect
import os
import typing

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # the kit runs without Triton (CPU wheels of PyTorch do not ship it)
    triton = None

STATS_BLOCK_V = 2048  # the interpreter's tiles; on a GPU, autotuning picks from the configs below
GRAD_BLOCK_N, GRAD_BLOCK_V = 64, 128
STATS_CONFIGS = [(1024, 4), (2048, 8), (4096, 8), (8192, 16)]  # (BLOCK_V, warps)
GRAD_CONFIGS = [(64, 128, 4), (32, 256, 4), (64, 256, 8), (128, 128, 8), (16, 512, 4), (128, 64, 4)]  # (BLOCK_N, BLOCK_V, warps)


def available(device) -> bool:
    """Whether these kernels can run on tensors of this device."""
    if triton is None:
        return False
    return torch.device(device).type == "cuda" or os.environ.get("TRITON_INTERPRET") == "1"


def autotune_caching() -> dict:
    """triton.autotune's flag that keeps each choice on disk, where this Triton has it (else nothing)."""
    return {"cache_results": True} if "cache_results" in inspect.signature(triton.autotune).parameters else {}


if triton is not None:

    @triton.jit
    def _capped_and_slope(z, cap, SIGMOID: tl.constexpr):
        """(capped logits, their slope d capped / dz) for either soft-cap form (kit.modeling.losses.softcap).
        tanh(u) comes from one exp: 1 - 2 / (exp(2u) + 1)."""
        if SIGMOID:
            s = 1.0 / (1.0 + tl.exp(-(z + 5.0) * (1.0 / 7.5)))
            return cap * s, (cap / 7.5) * s * (1.0 - s)
        else:
            t = 1.0 - 2.0 / (tl.exp(z * (2.0 / cap)) + 1.0)
            return cap * t, 1.0 - t * t

    @triton.jit
    def _round_to_e5m2_precision(x):
        """x (fp32) rounded to nearest-even at e5m2's 2 mantissa bits, so that the conversion to
        e5m2 that follows is exact for normal values on every backend (Triton's CPU interpreter
        mis-rounds values whose rounding carries into the exponent: 1.9 became 1.0)."""
        bits = x.to(tl.int32, bitcast=True)
        bits = (bits + 0xFFFFF + ((bits >> 21) & 1)) & -0x200000  # 21 dropped bits; -0x200000 == 0xFFE00000
        return bits.to(tl.float32, bitcast=True)

    @triton.jit
    def _row_stats(row_start, targets_ptr, weights_ptr, row, V, cap,
                   K: tl.constexpr, WEIGHTED: tl.constexpr, SIGMOID: tl.constexpr, BLOCK_V: tl.constexpr):
        """(lse, loss) of one row: one pass over its capped logits, then its K targets."""
        total = tl.zeros([BLOCK_V], dtype=tl.float32)
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            z = tl.load(row_start + cols, mask=cols < V, other=0.0).to(tl.float32)
            capped, _ = _capped_and_slope(z, cap, SIGMOID)
            total += tl.where(cols < V, tl.exp(capped - cap), 0.0)  # capped < cap: no running maximum needed
        lse = cap + tl.log(tl.sum(total, axis=0))
        loss = 0.0
        for k in tl.static_range(K):
            target = tl.load(targets_ptr + row * K + k)
            capped_target, _ = _capped_and_slope(tl.load(row_start + tl.maximum(target, 0)).to(tl.float32), cap, SIGMOID)
            if WEIGHTED:
                weight = tl.load(weights_ptr + k)
            else:
                weight = 1.0
            loss += tl.where(target >= 0, weight * (lse - capped_target), 0.0)
        return lse, loss

    @triton.jit
    def _grad_values(z, cols, lse, targets_ptr, weights_ptr, target_rows, in_rows, scale, cap,
                     K: tl.constexpr, WEIGHTED: tl.constexpr, SIGMOID: tl.constexpr, E5M2: tl.constexpr):
        """scale x d(summed loss)/dz for a tile z of rows target_rows (lse, in_rows per row) and columns cols:
        (softmax x the row's weight sum - its weighted one-hots) x the cap's slope, rounded for e5m2 where asked."""
        capped, slope = _capped_and_slope(z, cap, SIGMOID)
        weight_sum = tl.zeros(lse.shape, dtype=tl.float32)
        one_hots = tl.zeros(z.shape, dtype=tl.float32)
        for k in tl.static_range(K):
            target = tl.load(targets_ptr + target_rows * K + k, mask=in_rows, other=-1)
            if WEIGHTED:
                weight = tl.where(target >= 0, tl.load(weights_ptr + k), 0.0)
            else:
                weight = tl.where(target >= 0, 1.0, 0.0)
            weight_sum += weight
            one_hots += tl.where(cols[None, :] == target[:, None], weight[:, None], 0.0)
        g = (tl.exp(capped - lse[:, None]) * weight_sum[:, None] - one_hots) * slope * scale
        if E5M2:
            g = _round_to_e5m2_precision(g)
        return g

    @triton.jit
    def _stats_kernel(z_ptr, targets_ptr, weights_ptr, lse_ptr, loss_ptr, V, stride_z, cap,
                      K: tl.constexpr, WEIGHTED: tl.constexpr, SIGMOID: tl.constexpr, BLOCK_V: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        lse, loss = _row_stats(z_ptr + row * stride_z, targets_ptr, weights_ptr, row, V, cap, K, WEIGHTED, SIGMOID, BLOCK_V)
        tl.store(lse_ptr + row, lse)
        tl.store(loss_ptr + row, loss)

    @triton.jit
    def _grad_kernel(z_ptr, targets_ptr, weights_ptr, lse_ptr, scale_ptr, g_ptr, N, V, stride_z, cap,
                     K: tl.constexpr, WEIGHTED: tl.constexpr, SIGMOID: tl.constexpr,
                     BLOCK_N: tl.constexpr, BLOCK_V: tl.constexpr, E5M2: tl.constexpr):
        rows = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        cols = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        in_rows, in_cols = rows < N, cols < V
        inside = in_rows[:, None] & in_cols[None, :]
        rows64, cols64 = rows.to(tl.int64), cols.to(tl.int64)
        z = tl.load(z_ptr + rows64[:, None] * stride_z + cols64[None, :], mask=inside, other=0.0).to(tl.float32)
        lse = tl.load(lse_ptr + rows, mask=in_rows, other=0.0)
        g = _grad_values(z, cols, lse, targets_ptr, weights_ptr, rows64, in_rows, tl.load(scale_ptr), cap, K, WEIGHTED, SIGMOID, E5M2)
        g = g.to(g_ptr.dtype.element_ty, fp_downcast_rounding="rtne")
        tl.store(g_ptr + rows64[:, None] * V + cols64[None, :], g, mask=inside)

    @triton.jit
    def _stats_grad_kernel(z_ptr, targets_ptr, weights_ptr, lse_ptr, loss_ptr, scale_ptr, g_ptr, V, stride_z, cap,
                           K: tl.constexpr, WEIGHTED: tl.constexpr, SIGMOID: tl.constexpr, BLOCK_V: tl.constexpr, E5M2: tl.constexpr):
        """One row per program: its statistics (as _stats_kernel), then at once its gradient (as _grad_kernel), so the
        second pass reads the row while it is still in L2 instead of from memory in the backward."""
        row = tl.program_id(0).to(tl.int64)
        row_start = z_ptr + row * stride_z
        lse, loss = _row_stats(row_start, targets_ptr, weights_ptr, row, V, cap, K, WEIGHTED, SIGMOID, BLOCK_V)
        tl.store(lse_ptr + row, lse)
        tl.store(loss_ptr + row, loss)
        scale = tl.load(scale_ptr)
        row_tile = tl.zeros([1], dtype=tl.int64) + row  # the one row as a tile of rows, for _grad_values
        lse_tile = tl.zeros([1], dtype=tl.float32) + lse
        for start in range(0, V, BLOCK_V):
            cols = start + tl.arange(0, BLOCK_V)
            z = tl.load(row_start + cols[None, :], mask=cols[None, :] < V, other=0.0).to(tl.float32)
            g = _grad_values(z, cols, lse_tile, targets_ptr, weights_ptr, row_tile, row_tile >= 0, scale, cap, K, WEIGHTED, SIGMOID, E5M2)
            tl.store(g_ptr + row * V + cols[None, :], g.to(g_ptr.dtype.element_ty, fp_downcast_rounding="rtne"), mask=cols[None, :] < V)

    # On a GPU each shape is timed once per config at its first call (about a second) and the
    # fastest kept, on disk too where this Triton can (its cache, keyed by GPU, kernel and configs), so a
    # later run on the machine skips the timing in its warm-up; the interpreter runs the fixed tiles above.
    _CACHE_TUNING = autotune_caching()
    _stats_tuned = triton.autotune([triton.Config({"BLOCK_V": b}, num_warps=w) for b, w in STATS_CONFIGS], key=["V", "K"],
                                   **_CACHE_TUNING)(_stats_kernel)
    _grad_tuned = triton.autotune([triton.Config({"BLOCK_N": bn, "BLOCK_V": bv}, num_warps=w) for bn, bv, w in GRAD_CONFIGS],
                                  key=["N", "V", "K", "E5M2"], **_CACHE_TUNING)(_grad_kernel)
    _stats_grad_tuned = triton.autotune([triton.Config({"BLOCK_V": b}, num_warps=w) for b, w in STATS_CONFIGS], key=["V", "K", "E5M2"],
                                        **_CACHE_TUNING)(_stats_grad_kernel)


def kernel_builds(fp8: bool = True, targets: int = 3, one_pass: bool = True):
    """(name, kernel, signature, constexprs, num_warps) for every configuration the GPU's autotuning may
    pick, with the record's types (bf16 logits, `targets` targets per position (three by default), weighted,
    sigmoid cap; the gradient in e5m2 where the GPU has FP8, else bf16): what a shared-memory audit compiles
    for a smaller card (scripts/audit_shared_memory.py). The one-pass kernel where one_pass and fp8 (it serves
    only the FP8 head)."""
    types = {"z_ptr": "*bf16", "targets_ptr": "*i64", "weights_ptr": "*fp32", "lse_ptr": "*fp32", "loss_ptr": "*fp32", "scale_ptr": "*fp32",
             "g_ptr": "*fp8e5" if fp8 else "*bf16", "N": "i32", "V": "i32", "stride_z": "i32", "cap": "fp32"}
    stats, grad, both = ({name: types.get(name, "constexpr") for name in kernel.arg_names} for kernel in (_stats_kernel, _grad_kernel, _stats_grad_kernel))
    flags = {"K": targets, "WEIGHTED": True, "SIGMOID": True}
    for block_v, warps in STATS_CONFIGS:
        yield f"loss stats (BLOCK_V {block_v}, {warps} warps)", _stats_kernel, stats, {**flags, "BLOCK_V": block_v}, warps
        if one_pass and fp8:
            yield (f"loss stats and gradient in one pass (BLOCK_V {block_v}, {warps} warps)", _stats_grad_kernel, both,
                   {**flags, "BLOCK_V": block_v, "E5M2": True}, warps)
    for block_n, block_v, warps in GRAD_CONFIGS:
        yield (f"loss gradient (BLOCK_N {block_n}, BLOCK_V {block_v}, {warps} warps)", _grad_kernel, grad,
               {**flags, "BLOCK_N": block_n, "BLOCK_V": block_v, "E5M2": fp8}, warps)


def _interpreted(t: torch.Tensor) -> bool:
    return t.device.type != "cuda"


def _target_args(targets, weights):
    """(targets as (N, K) contiguous, weights or a placeholder, K, whether weighted) for the kernels."""
    k = 1 if targets.dim() == 1 else targets.size(1)
    weighted = weights is not None
    return targets.contiguous(), (weights.float().contiguous() if weighted else targets), k, weighted


@torch.library.custom_op("kit::softcapped_ce_stats", mutates_args=())
def softcapped_ce_stats(z: torch.Tensor, targets: torch.Tensor, cap: float, form: str = "tanh",
                        weights: typing.Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(logsumexp of each row's capped logits, each row's loss), both fp32 (N,); targets (N,), or
    (N, K) with weights (K,) (kit.modeling.losses)."""
    n, v = z.shape
    z = z if z.stride(1) == 1 else z.contiguous()
    targets, weights, k, weighted = _target_args(targets, weights)
    lse = torch.empty(n, dtype=torch.float32, device=z.device)
    loss = torch.empty_like(lse)
    args = (z, targets, weights, lse, loss, v, z.stride(0), cap)
    flags = dict(K=k, WEIGHTED=weighted, SIGMOID=form == "sigmoid")
    if _interpreted(z):
        _stats_kernel[(n,)](*args, **flags, BLOCK_V=STATS_BLOCK_V)
    else:
        _stats_tuned[(n,)](*args, **flags)
    return lse, loss


@softcapped_ce_stats.register_fake
def _(z, targets, cap, form="tanh", weights=None):
    return z.new_empty(z.size(0), dtype=torch.float32), z.new_empty(z.size(0), dtype=torch.float32)


@torch.library.custom_op("kit::softcapped_ce_grad", mutates_args=())
def softcapped_ce_grad(z: torch.Tensor, targets: torch.Tensor, lse: torch.Tensor, scale: torch.Tensor, cap: float,
                       out_dtype: torch.dtype, form: str = "tanh", weights: typing.Optional[torch.Tensor] = None) -> torch.Tensor:
    """scale x d(summed loss)/dz as (N, V) in out_dtype."""
    n, v = z.shape
    z = z if z.stride(1) == 1 else z.contiguous()
    targets, weights, k, weighted = _target_args(targets, weights)
    g = torch.empty(n, v, dtype=out_dtype, device=z.device)
    args = (z, targets, weights, lse, scale.float().reshape(1), g, n, v, z.stride(0), cap)
    flags = dict(K=k, WEIGHTED=weighted, SIGMOID=form == "sigmoid", E5M2=out_dtype == torch.float8_e5m2)
    if _interpreted(z):
        grid = (triton.cdiv(n, GRAD_BLOCK_N), triton.cdiv(v, GRAD_BLOCK_V))
        _grad_kernel[grid](*args, **flags, BLOCK_N=GRAD_BLOCK_N, BLOCK_V=GRAD_BLOCK_V)
    else:
        _grad_tuned[lambda meta: (triton.cdiv(n, meta["BLOCK_N"]), triton.cdiv(v, meta["BLOCK_V"]))](*args, **flags)
    return g


@softcapped_ce_grad.register_fake
def _(z, targets, lse, scale, cap, out_dtype, form="tanh", weights=None):
    return z.new_empty(z.shape, dtype=out_dtype)


@torch.library.custom_op("kit::softcapped_ce_stats_grad", mutates_args=())
def softcapped_ce_stats_grad(z: torch.Tensor, targets: torch.Tensor, scale: torch.Tensor, cap: float, out_dtype: torch.dtype,
                             form: str = "tanh", weights: typing.Optional[torch.Tensor] = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """softcapped_ce_stats and softcapped_ce_grad in one kernel, one row per program: (lse, each row's loss,
    scale x d(summed loss)/dz in out_dtype), for a gradient whose scale is known in the forward (the FP8 head's)."""
    n, v = z.shape
    z = z if z.stride(1) == 1 else z.contiguous()
    targets, weights, k, weighted = _target_args(targets, weights)
    lse = torch.empty(n, dtype=torch.float32, device=z.device)
    loss = torch.empty_like(lse)
    g = torch.empty(n, v, dtype=out_dtype, device=z.device)
    args = (z, targets, weights, lse, loss, scale.float().reshape(1), g, v, z.stride(0), cap)
    flags = dict(K=k, WEIGHTED=weighted, SIGMOID=form == "sigmoid", E5M2=out_dtype == torch.float8_e5m2)
    if _interpreted(z):
        _stats_grad_kernel[(n,)](*args, **flags, BLOCK_V=STATS_BLOCK_V)
    else:
        _stats_grad_tuned[(n,)](*args, **flags)
    return lse, loss, g


@softcapped_ce_stats_grad.register_fake
def _(z, targets, scale, cap, out_dtype, form="tanh", weights=None):
    rows = z.new_empty(z.size(0), dtype=torch.float32)
    return rows, torch.empty_like(rows), z.new_empty(z.shape, dtype=out_dtype)
