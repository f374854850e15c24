"""Cross-entropy of a linear output layer computed in row chunks, never holding the full logits.

The output layer's logits are the largest tensor of a GPT-2 step: N x 50257 numbers (fp32 for a
stable softmax) for N tokens, kept for the backward pass. Here the loss and both gradients are
computed chunk by chunk in the forward pass (the gradient of the summed loss with respect to a
chunk's logits is softmax - one_hot, so nothing else is needed), and the backward pass only
scales them: peak memory holds one chunk's logits instead of all of them, at the price of doing
the output matmuls in the forward pass (the total work is the same: 3 matmuls per chunk).
"""

import torch


class _ChunkedLinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, h, weight, targets, chunk: int):
        n = h.size(0)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        grad_h = torch.empty_like(h)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        for start in range(0, n, chunk):
            hc, tc = h[start:start + chunk], targets[start:start + chunk]
            logits = (hc @ weight.t()).float()
            log_z = torch.logsumexp(logits, dim=-1)
            total += (log_z - logits.gather(-1, tc[:, None]).squeeze(-1)).sum()
            dlogits = torch.exp(logits - log_z[:, None])  # softmax
            dlogits[torch.arange(len(tc), device=tc.device), tc] -= 1
            dlogits = dlogits.to(h.dtype)
            grad_h[start:start + chunk] = dlogits @ weight
            grad_w += (dlogits.t() @ hc).float()
        ctx.save_for_backward(grad_h, grad_w)
        ctx.n = n
        return total / n

    @staticmethod
    def backward(ctx, grad_loss):
        grad_h, grad_w = ctx.saved_tensors
        scale = grad_loss / ctx.n
        return grad_h * scale.to(grad_h.dtype), (grad_w * scale).to(grad_w.dtype), None, None


def chunked_linear_cross_entropy(h, weight, targets, chunk: int = 8192):
    """mean over rows of -log softmax(h @ weight^T)[target]; h (..., d), weight (V, d), targets (...).

    Under autocast the matmuls run in its dtype, as nn.Linear's would; softmax and sums in fp32.
    """
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    device_type = h.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        h, weight = h.to(dtype), weight.to(dtype)
    with torch.autocast(device_type, enabled=False):
        return _ChunkedLinearCrossEntropy.apply(h, weight, targets, chunk)


# ----- soft-capped cross-entropy that keeps only the bf16 logits for its backward pass -----
#
# The speedrun's head caps its logits z before the softmax: cap * tanh(z / cap) (form "tanh", the
# public record's of 2025), or cap * sigmoid((z + 5) / 7.5) (form "sigmoid", cap 23: its record of
# 2025-12-26, which lets the logits reach further below zero than above). Written with
# F.cross_entropy, autograd keeps an fp32 N x V intermediate (the capped logits' log-softmax)
# for the backward pass. Here the backward is written out: it needs only z (already in memory as
# the matmul's bf16 output) and one logsumexp per row, and recomputes the cheap pointwise rest.
# Measured on an H200 (records/2026-11-29_h200_fused_loss_first_contact): 5 GiB less peak memory
# at micro-batch 6 x 16,384, tokens/s unchanged (the compiled plain version was not slower).
#
# Several targets per row (multi-token prediction from the same logits): targets (N, K) and
# weights (K,); each row's loss is sum_k weights[k] * (lse - capped[target_k]), a target of -1
# adds nothing. The gradient is then (sum of the row's weights) * softmax - sum_k weights[k] * one_hot.

SIGMOID_SHIFT, SIGMOID_TEMPERATURE = 5.0, 7.5
CAP_FORMS = ("tanh", "sigmoid")


def softcap(z, cap: float, form: str = "tanh"):
    if form == "tanh":
        return cap * torch.tanh(z / cap)
    if form == "sigmoid":
        return cap * torch.sigmoid((z + SIGMOID_SHIFT) / SIGMOID_TEMPERATURE)
    raise ValueError(f"unknown soft-cap form {form!r} (tanh or sigmoid)")


def softcap_slope(capped, cap: float, form: str = "tanh"):
    """d capped / dz, from the capped values themselves."""
    if form == "tanh":
        return 1 - (capped / cap) ** 2
    return capped / SIGMOID_TEMPERATURE * (1 - capped / cap)


def row_losses(capped, lse, targets, weights=None):
    """Each row's loss from its capped logits (N, V) and logsumexp (N,): targets (N,), or (N, K) with weights (K,)."""
    if targets.dim() == 1:
        return lse - capped.gather(1, targets[:, None]).squeeze(1)
    picked = capped.gather(1, targets.clamp(min=0))
    return ((lse[:, None] - picked) * (targets >= 0) * weights).sum(1)


def softcapped_logsumexp_and_loss(z, targets, cap: float, form: str = "tanh", weights=None):
    """(logsumexp per row, mean loss) of the capped logits of z (N, V), in fp32."""
    capped = softcap(z.float(), cap, form)
    lse = torch.logsumexp(capped, dim=-1)
    return lse, row_losses(capped, lse, targets, weights).mean()


def softcapped_grad_unscaled(z, targets, lse, cap: float, form: str = "tanh", weights=None):
    """d(summed loss)/dz for each row: (softmax * sum of weights - weighted one_hots) x d cap(z)/dz."""
    capped = softcap(z.float(), cap, form)
    grad = torch.exp(capped - lse[:, None])
    if targets.dim() == 1:
        grad = grad.scatter_add(1, targets[:, None], -torch.ones_like(lse)[:, None])
    else:
        w = (targets >= 0) * weights
        grad = (grad * w.sum(1, keepdim=True)).scatter_add(1, targets.clamp(min=0), -w)
    return grad * softcap_slope(capped, cap, form)


def softcapped_stats(z, targets, cap: float, kernel: str = "torch", form: str = "tanh", weights=None):
    """(logsumexp per row, mean loss) of the capped logits, with the chosen kernel."""
    if kernel == "triton":
        from kit.modeling.triton_loss import softcapped_ce_stats

        lse, rows = softcapped_ce_stats(z, targets, cap, form, weights)
        return lse, rows.mean()
    return softcapped_logsumexp_and_loss(z, targets, cap, form, weights)


def softcapped_grad(z, targets, lse, cap: float, scale, out_dtype, kernel: str = "torch", form: str = "tanh", weights=None):
    """scale x d(summed loss)/dz in out_dtype, with the chosen kernel."""
    if kernel == "triton":
        from kit.modeling.triton_loss import softcapped_ce_grad

        return softcapped_ce_grad(z, targets, lse, scale, cap, out_dtype, form, weights)
    return (softcapped_grad_unscaled(z, targets, lse, cap, form, weights) * scale).to(out_dtype)


class SoftcappedCrossEntropy(torch.autograd.Function):
    """mean over rows of -log softmax(softcap(z))[target], z (N, V) logits in any dtype; targets (N,),
    or (N, K) with weights (K,) (see above)."""

    @staticmethod
    def forward(ctx, z, targets, cap: float, kernel: str = "torch", form: str = "tanh", weights=None):
        lse, loss = softcapped_stats(z, targets, cap, kernel, form, weights)
        ctx.save_for_backward(z, targets, lse, weights)
        ctx.cap, ctx.kernel, ctx.form = cap, kernel, form
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        z, targets, lse, weights = ctx.saved_tensors
        grad = softcapped_grad(z, targets, lse, ctx.cap, grad_loss / z.size(0), z.dtype, ctx.kernel, ctx.form, weights)
        return grad, None, None, None, None, None


def softcapped_cross_entropy(z, targets, cap: float, kernel: str = "torch", form: str = "tanh", weights=None):
    """targets (...) for one target per position, or (..., K) with weights (K,) for several."""
    rows = z.reshape(-1, z.size(-1))
    targets = targets.reshape(rows.size(0), -1) if weights is not None else targets.reshape(-1)
    return SoftcappedCrossEntropy.apply(rows, targets, cap, kernel, form, weights)


def softcapped_stats_and_grad(z, targets, cap: float, scale, out_dtype, kernel: str = "torch", form: str = "tanh", weights=None):
    """(logsumexp per row, mean loss, scale x d(summed loss)/dz in out_dtype) at once, for a gradient whose scale is
    known before the backward (the FP8 head's): Triton's one-pass kernel, or the two steps above."""
    if kernel == "triton":
        from kit.modeling.triton_loss import softcapped_ce_stats_grad

        lse, rows, grad = softcapped_ce_stats_grad(z, targets, scale, cap, out_dtype, form, weights)
        return lse, rows.mean(), grad
    lse, loss = softcapped_stats(z, targets, cap, kernel, form, weights)
    return lse, loss, softcapped_grad(z, targets, lse, cap, scale, out_dtype, kernel, form, weights)
