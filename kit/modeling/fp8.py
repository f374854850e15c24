"""FP8 matrix products for the output head and the MLPs (GPUs with FP8 tensor cores: sm89 and newer).

The head's product x @ W^T (tokens x width times width x vocabulary) is the largest single
matmul of a small GPT. Here its inputs go to float8_e4m3fn and the incoming gradient to
float8_e5m2 (more range, less precision, as gradients need), each with a per-tensor scale
from its absolute maximum, and torch._scaled_mm multiplies them: the forward product with
Hopper's fast accumulation (as the public recipe; its sums over 768 terms are short), the
gradient products with exact fp32 accumulation.
Weights stay fp32 (or bf16) parameters; only the copies fed to the products are FP8.

The MLPs' projections take FP8 in the forward product only (FP8ForwardMatmulWeightT; the public
records of 2026-05-21 and 2026-07-17 did this for the up and then the down projection): their
backward products stay exact in the activations' precision, from the bf16 input kept as a plain
Linear keeps it, so only the forward's rounding differs from a bf16 layer.
"""

import torch
import torch.nn as nn

from kit.core import gpus
from kit.modeling.losses import softcapped_grad, softcapped_stats, softcapped_stats_and_grad

E4M3 = torch.float8_e4m3fn
E5M2 = torch.float8_e5m2


def gpu_has_fp8(device) -> bool:
    """FP8 matmuls on this GPU (or the card --emulate-gpu runs as)."""
    return gpus.fp8_capable(gpus.capability(device))


def quantize(t: torch.Tensor, dtype):
    """(FP8 copy of t scaled so its largest magnitude is the format's maximum, the factor that undoes it)."""
    amax = t.detach().abs().max().float().clamp(min=1e-12)
    scale = torch.finfo(dtype).max / amax
    return (t.float() * scale).to(dtype), scale.reciprocal()


def column_major(t: torch.Tensor) -> torch.Tensor:
    """The same matrix stored column by column, as _scaled_mm wants its second operand."""
    return t.t().contiguous().t()


def fp8_product(x, w):
    """(x @ w^T in bf16, the FP8 operands and their inverse scales for the backward products)."""
    x8, x_inv = quantize(x, E4M3)
    w8, w_inv = quantize(w, E4M3)
    y = torch._scaled_mm(x8, w8.t(), scale_a=x_inv, scale_b=w_inv, out_dtype=torch.bfloat16, use_fast_accum=True)
    return y, (x8, x_inv, w8, w_inv)


def fp8_gradient_products(g8, g_inv, operands, w_dtype):
    """(grad x, grad w) of y = x @ w^T from the e5m2 gradient of y and the forward's FP8 operands."""
    x8, x_inv, w8, w_inv = operands
    g8_transposed = g8.t().contiguous()  # the weight-gradient product takes g8 as (M, N), row-major
    grad_x = torch._scaled_mm(g8, column_major(w8), scale_a=g_inv, scale_b=w_inv, out_dtype=torch.bfloat16)
    grad_w = torch._scaled_mm(g8_transposed, column_major(x8), scale_a=g_inv, scale_b=x_inv, out_dtype=torch.float32)
    return grad_x, grad_w.to(w_dtype)


def linear_output_dtype(x: torch.Tensor):
    """The dtype a plain Linear would give for x: autocast's where it is on (bf16 on a GPU: the FP8 product's own,
    so no copy), else x's (an fp32 model on a CPU, whose next layer takes fp32)."""
    return torch.get_autocast_dtype(x.device.type) if torch.is_autocast_enabled(x.device.type) else x.dtype


class FP8MatmulWeightT(torch.autograd.Function):
    """y = x @ w^T for x (N, K), w (M, K), with FP8 operands in forward and backward."""

    @staticmethod
    def forward(ctx, x, w):
        y, operands = fp8_product(x, w)
        ctx.save_for_backward(*operands)
        ctx.w_dtype = w.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        return fp8_gradient_products(*quantize(grad, E5M2), ctx.saved_tensors, ctx.w_dtype)


class FP8ForwardMatmulWeightT(torch.autograd.Function):
    """y = x @ w^T for x (N, K), w (M, K): the forward product in FP8 (as FP8MatmulWeightT's), the backward
    products exact in x's precision from x and w themselves."""

    @staticmethod
    def forward(ctx, x, w):
        y, _ = fp8_product(x, w)
        ctx.save_for_backward(x, w)
        return y  # bf16; FP8Head.forward gives a plain Linear's dtype outside this function

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad_x = grad.to(x.dtype) @ w.to(x.dtype)
        grad_w = grad.t().to(x.dtype) @ x
        return grad_x, grad_w.to(w.dtype)


class FP8Head(nn.Linear):
    """A bias-free Linear whose product runs in FP8 while training when `fp8` is set (callers set
    it per GPU); evaluation and generation take the exact product, as the public recipe does."""

    product = FP8MatmulWeightT  # FP8 both ways

    def __init__(self, in_features: int, out_features: int, fp8: bool = False):
        super().__init__(in_features, out_features, bias=False)
        self.fp8 = fp8

    def forward(self, x):
        if not (self.fp8 and self.training):
            return super().forward(x)
        flat = x.reshape(-1, x.size(-1))
        # a plain Linear's dtype (fp32 in an fp32 model on a CPU), cast here, outside the autograd function: see FP8ForwardLinear
        return self.product.apply(flat, self.weight).to(linear_output_dtype(x)).view(*x.shape[:-1], self.out_features)


class FP8ForwardLinear(FP8Head):
    """The same switch for an MLP projection: FP8 in the forward product only. Its output takes the dtype a plain
    Linear would give (an fp32 model on a CPU: fp32), cast in FP8Head.forward, outside the autograd function. With that cast
    inside it (a no-op on a GPU, so the function returned an alias of its product), the compiled record trained
    its up projections wrongly on an H200 under torch 2.11 (loss 0.2 higher all run, steps 12% cheaper), while
    torch 2.13 on a CPU matched eager. Torch 2.11 can route an autograd function's gradient to the wrong slot under
    compile when its output is the same tensor as an intermediate (pytorch/pytorch#180642, there through an
    in-place op), which would fit. The function stays as measured."""

    product = FP8ForwardMatmulWeightT


E5M2_HEADROOM = 2.0 ** 15  # a power of two under e5m2's largest value (57,344)


def e5m2_headroom(grad_bound: float = 1.0) -> float:
    """The scale for a gradient whose elements lie in [-grad_bound, grad_bound]: E5M2_HEADROOM divided
    by the power of two at or above grad_bound, so the largest element stays under 57,344."""
    power = 1.0
    while power < grad_bound:
        power *= 2
    return E5M2_HEADROOM / power


class FP8SoftcappedHeadLoss(torch.autograd.Function):
    """Mean soft-capped cross-entropy of the head x @ w^T, the product in FP8 both ways.

    Forward: x and w to e4m3 (scaled by their maxima, as FP8MatmulWeightT), logits z in bf16,
    loss from z (kit.modeling.losses). Backward: the gradient of the logits is (softmax - one_hot) times
    the cap's slope, so every element lies in [-1, 1] (in [-grad_bound, grad_bound] with several
    weighted targets: grad_bound >= their weights' sum) before the factor grad_loss / N; it goes
    to e5m2 with that known scale (no pass over the N x V gradient to find its maximum), in the
    same pass that computes it, and feeds the two gradient products.

    one_pass: the e5m2 gradient is computed in the forward, in the statistics' pass (its scale does not
    depend on grad_loss), and kept instead of the logits: a caller that will not run the backward pays
    for it, so only the training loss sets it."""

    @staticmethod
    def forward(ctx, x, w, targets, cap: float, kernel: str = "torch", form: str = "tanh", weights=None, grad_bound: float = 1.0,
                one_pass: bool = False):
        z, operands = fp8_product(x, w)
        ctx.cap, ctx.w_dtype, ctx.kernel, ctx.form, ctx.headroom = cap, w.dtype, kernel, form, e5m2_headroom(grad_bound)
        ctx.rows = z.size(0)
        if one_pass:
            headroom = torch.full((), ctx.headroom, device=z.device)
            _, loss, g8 = softcapped_stats_and_grad(z, targets, cap, headroom, E5M2, kernel, form, weights)
            ctx.save_for_backward(*operands, g8)
        else:
            lse, loss = softcapped_stats(z, targets, cap, kernel, form, weights)
            ctx.save_for_backward(*operands, z, targets, lse, weights)
        ctx.one_pass = one_pass
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        if ctx.one_pass:
            *operands, g8 = ctx.saved_tensors
        else:
            *operands, z, targets, lse, weights = ctx.saved_tensors
            headroom = torch.full((), ctx.headroom, device=z.device)
            g8 = softcapped_grad(z, targets, lse, ctx.cap, headroom, E5M2, ctx.kernel, ctx.form, weights)
        g_inv = (grad_loss.float() / (ctx.rows * ctx.headroom)).reshape(())
        return *fp8_gradient_products(g8, g_inv, operands, ctx.w_dtype), None, None, None, None, None, None, None
