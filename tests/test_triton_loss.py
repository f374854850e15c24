"""The Triton kernels of the soft-capped cross-entropy (kit/modeling/triton_loss.py) against the PyTorch
reference (kit/modeling/losses.py). On a CPU they run under Triton's interpreter, in a child process
because TRITON_INTERPRET is read when the kernels are defined; the same checks run on CUDA in
tests/test_gpu.py."""

import pytest

from conftest import run_interpreted

pytest.importorskip("triton", reason="Triton is not installed (GPU builds of PyTorch ship it; requirements-dev.txt adds it for CI)")

# Checks shared with the GPU test: check_kernels(device) raises AssertionError on a mismatch.
KERNEL_CHECKS = r'''
import torch
from kit.modeling import triton_loss
from kit.modeling.fp8 import E5M2, E5M2_HEADROOM
from kit.modeling.losses import softcapped_grad_unscaled, softcapped_logsumexp_and_loss


def check_kernels(device, n=70, v=300):
    """Odd sizes leave partial tiles in both directions."""
    g = torch.Generator().manual_seed(0)
    z = (8 * torch.randn(n, v, generator=g)).to(torch.bfloat16).to(device)
    targets = torch.randint(0, v, (n,), generator=g).to(device)
    lse, rows = triton_loss.softcapped_ce_stats(z, targets, 15.0)
    ref_lse, ref_loss = softcapped_logsumexp_and_loss(z, targets, 15.0)
    torch.testing.assert_close(lse, ref_lse, rtol=0, atol=1e-5)
    torch.testing.assert_close(rows.mean(), ref_loss, rtol=0, atol=1e-5)

    ref_grad = softcapped_grad_unscaled(z, targets, ref_lse, 15.0)
    scale = torch.tensor(0.37, device=device)
    for dtype, atol in ((torch.float32, 1e-6), (torch.bfloat16, 4e-3)):
        grad = triton_loss.softcapped_ce_grad(z, targets, ref_lse, scale, 15.0, dtype)
        assert grad.dtype == dtype and grad.shape == (n, v)
        torch.testing.assert_close(grad.float(), ref_grad * 0.37, rtol=0, atol=atol)

    headroom = torch.tensor(E5M2_HEADROOM, device=device)
    g8 = triton_loss.softcapped_ce_grad(z, targets, ref_lse, headroom, 15.0, E5M2)
    assert g8.dtype == E5M2 and g8.shape == (n, v)
    # The kernel's own fp32 gradient (checked against the reference above) must round to exactly
    # its e5m2 output. Against the reference's rounding, an element within an ulp of a rounding
    # boundary may land one e5m2 step away (found at 2,048 x 50,304 on an H200), never further.
    own = triton_loss.softcapped_ce_grad(z, targets, ref_lse, headroom, 15.0, torch.float32)
    expected = own.to(E5M2).float()
    normal = own.abs() >= 2.0 ** -14  # e5m2's normal range; below it, one subnormal step (2^-16) apart at most
    assert torch.equal(g8.float()[normal], expected[normal])
    assert (g8.float() - expected).abs().max().item() <= 2.0 ** -16
    assert normal.float().mean().item() > 0.4  # the exact check covered many elements (73% here, 49% at V=50,304)
    reference = (ref_grad * E5M2_HEADROOM).to(E5M2).float()
    apart = (g8.float() - reference)[normal].abs()
    assert (apart <= reference[normal].abs() / 4 * 1.001).all()  # e5m2 keeps 2 mantissa bits
    assert (apart > 0).float().mean().item() < 1e-4


def check_multi_target_kernels(device, n=70, v=300):
    """Several weighted targets per row (some -1) with the sigmoid cap, against the PyTorch reference."""
    from kit.modeling.losses import softcapped_grad_unscaled, softcapped_logsumexp_and_loss

    g = torch.Generator().manual_seed(2)
    z = (8 * torch.randn(n, v, generator=g)).to(torch.bfloat16).to(device)
    targets = torch.randint(0, v, (n, 3), generator=g)
    targets[::5, 2] = -1
    targets[::7, 1:] = -1
    targets = targets.to(device)
    weights = torch.tensor([1.0, 0.5, 0.25], device=device)
    for form, cap in (("sigmoid", 23.0), ("tanh", 15.0)):
        lse, rows = triton_loss.softcapped_ce_stats(z, targets, cap, form, weights)
        ref_lse, ref_loss = softcapped_logsumexp_and_loss(z, targets, cap, form, weights)
        torch.testing.assert_close(lse, ref_lse, rtol=0, atol=1e-5)
        torch.testing.assert_close(rows.mean(), ref_loss, rtol=0, atol=1e-5)
        ref_grad = softcapped_grad_unscaled(z, targets, ref_lse, cap, form, weights)
        scale = torch.tensor(0.37, device=device)
        grad = triton_loss.softcapped_ce_grad(z, targets, ref_lse, scale, cap, torch.float32, form, weights)
        torch.testing.assert_close(grad, ref_grad * 0.37, rtol=0, atol=1e-6)


def check_one_pass_kernel(device, n=70, v=300):
    """The statistics and the gradient in one kernel equal the two kernels': the same lse and losses, and from that
    lse the same gradient bit for bit (e5m2 and fp32), with one target and the tanh cap, and with three weighted
    targets (some -1) and the sigmoid cap."""
    g = torch.Generator().manual_seed(3)
    z = (8 * torch.randn(n, v, generator=g)).to(torch.bfloat16).to(device)
    several = torch.randint(0, v, (n, 3), generator=g)
    several[::5, 2] = -1
    settings = [(several[:, 0].to(device), 15.0, "tanh", None), (several.to(device), 23.0, "sigmoid", torch.tensor([1.0, 0.5, 0.25], device=device))]
    for targets, cap, form, weights in settings:
        lse, rows = triton_loss.softcapped_ce_stats(z, targets, cap, form, weights)
        for dtype, scale in ((E5M2, E5M2_HEADROOM), (torch.float32, 0.37)):
            scale = torch.tensor(scale, device=device)
            one_lse, one_rows, one_grad = triton_loss.softcapped_ce_stats_grad(z, targets, scale, cap, dtype, form, weights)
            torch.testing.assert_close(one_lse, lse, rtol=0, atol=1e-5)
            torch.testing.assert_close(one_rows, rows, rtol=0, atol=1e-5)
            grad = triton_loss.softcapped_ce_grad(z, targets, one_lse, scale, cap, dtype, form, weights)
            assert one_grad.dtype == dtype and torch.equal(one_grad.float(), grad.float()), (form, dtype)


def check_losses_through_autograd(device, v=500):
    """The fused losses give the same loss and gradients with either kernel (CUDA's FP8 products
    want every size a multiple of 16: v=512 there); once with one target and the tanh cap, once
    with three weighted targets (some -1) and the sigmoid cap."""
    from kit.modeling.fp8 import FP8SoftcappedHeadLoss
    from kit.modeling.losses import softcapped_cross_entropy

    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(96, 64, generator=g).to(device)
    w0 = (0.3 * torch.randn(v, 64, generator=g)).to(device)
    several = torch.randint(0, v, (96, 3), generator=g)
    several[::4, 2] = -1
    settings = [(several[:, 0].to(device), 15.0, "tanh", None, 1.0),
                (several.to(device), 23.0, "sigmoid", torch.tensor([1.0, 0.5, 0.25], device=device), 1.75)]
    for targets, cap, form, weights, bound in settings:
        results = {}
        for kernel in ("torch", "triton"):
            x, w = x0.clone().requires_grad_(), w0.clone().requires_grad_()
            fp8 = FP8SoftcappedHeadLoss.apply(x, w, targets, cap, kernel, form, weights, bound)
            (0.25 * fp8).backward()
            x1, w1 = x0.clone().requires_grad_(), w0.clone().requires_grad_()  # the gradient computed in the forward's pass
            one_pass = FP8SoftcappedHeadLoss.apply(x1, w1, targets, cap, kernel, form, weights, bound, True)
            (0.25 * one_pass).backward()
            for a, b in ((one_pass, fp8), (x1.grad, x.grad), (w1.grad, w.grad)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=f"{kernel}, {form}: one pass")
            z = (x0 @ w0.t()).to(torch.bfloat16).requires_grad_()
            plain = softcapped_cross_entropy(z, targets, cap, kernel, form, weights)
            plain.backward()
            results[kernel] = (fp8.detach(), x.grad, w.grad, plain.detach(), z.grad.float())
        names = ("fp8 loss", "fp8 grad x", "fp8 grad w", "loss", "grad z")
        for name, a, b in zip(names, results["torch"], results["triton"]):
            # the bf16 gradient of z may round the other way where the two kernels' cap differs in the last fp32 bits
            rtol = 2.0 ** -7 if name == "grad z" else 1e-4
            torch.testing.assert_close(b, a, rtol=rtol, atol=1e-7, msg=f"{form}: {name}")
'''


ROUND_TO_E5M2_CHECK = r'''
import triton, triton.language as tl

@triton.jit
def round_kernel(x_ptr, y_ptr, n, BLOCK: tl.constexpr):
    i = tl.arange(0, BLOCK)
    tl.store(y_ptr + i, triton_loss._round_to_e5m2_precision(tl.load(x_ptr + i, mask=i < n)), mask=i < n)

def check_round_to_e5m2():
    x = torch.tensor([1.9, 1.125, 1.375, -1.875, 3.5, 1e-3, -0.7, 57344.0, 2.0 ** -14, 1.0 + 2.0 ** -3])
    y = torch.empty_like(x)
    round_kernel[(1,)](x, y, len(x), BLOCK=16)
    assert torch.equal(y, x.to(E5M2).float()), (y, x.to(E5M2).float())
'''

INTERPRETED_CHECKS = {
    "kernels": "check_kernels('cpu'); check_multi_target_kernels('cpu'); check_one_pass_kernel('cpu')",
    "losses_through_autograd": "check_losses_through_autograd('cpu')",
    "round_to_e5m2": "check_round_to_e5m2()",
}


@pytest.fixture(scope="module")
def interpreted():
    """{check name: "ok" or its traceback}, from one child process under Triton's CPU interpreter."""
    return run_interpreted(KERNEL_CHECKS + ROUND_TO_E5M2_CHECK, INTERPRETED_CHECKS)


def test_kernels_equal_the_pytorch_reference_and_train_alike_in_the_interpreter(interpreted):
    """The kernels against the PyTorch reference (one target with the tanh cap, then several weighted targets with both
    caps), the fused losses through autograd with either kernel, and e5m2 rounding; one test, so the interpreter's child
    process runs once."""
    assert interpreted["kernels"] == "ok", interpreted["kernels"]
    assert interpreted["losses_through_autograd"] == "ok", interpreted["losses_through_autograd"]
    # the kernel rounds at e5m2's precision before converting (Triton's interpreter mis-rounds carries into the
    # exponent, e.g. 1.9 -> 1.0): nearest-even, ties included, as torch does for normal values
    assert interpreted["round_to_e5m2"] == "ok", interpreted["round_to_e5m2"]


def test_loss_kernel_choice_falls_back_or_says_why(capsys):
    """auto takes PyTorch's kernels where Triton cannot run; asking for Triton there is a clear error."""
    import train_gpt2_speedrun as speedrun
    from kit.loop.train import main

    assert speedrun.loss_kernel(speedrun.Hyperparameters(device="cpu", loss_kernel="auto")) == "torch"
    tiny = ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--seq-len", "128", "--batch-tokens", "256", "--max-steps", "1"]
    for extra, message in ((["--loss-kernel", "triton"], "--loss-kernel triton needs Triton and a CUDA GPU (this run has no GPU)"),
                           (["--loss-kernel", "triton", "--fused-loss", "0"], "--loss-kernel triton is the fused loss's kernel: it needs --fused-loss 1")):
        assert main(speedrun.RECIPE, tiny + extra) != 0
        assert message in capsys.readouterr().err


def test_the_loss_kernels_keep_their_tuning_on_disk_where_triton_can():
    """Timing the configurations takes about a second of each run's warm-up; Triton's cache keeps the winner per GPU,
    kernel and configs, so a later run on the machine loads it (a Triton without the option times them each run)."""
    import inspect

    import triton

    from kit.modeling import triton_loss

    if "cache_results" not in inspect.signature(triton.autotune).parameters:
        pytest.skip("this Triton's autotuner has no cache_results")
    assert triton_loss._stats_tuned.cache_results and triton_loss._grad_tuned.cache_results
