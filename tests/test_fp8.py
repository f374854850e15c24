"""FP8 head products against an fp32 reference (torch._scaled_mm runs on the CPU too)."""

import torch

from kit.modeling.fp8 import E4M3, FP8Head, FP8MatmulWeightT, quantize


def relative_error(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def test_quantize_uses_the_formats_range():
    t = torch.randn(64, 64) * 3
    q, inverse = quantize(t, E4M3)
    assert q.dtype == E4M3 and q.float().abs().max().item() == torch.finfo(E4M3).max
    assert relative_error(q.float() * inverse, t) < 0.05  # 3 mantissa bits: a few percent per element


def product_with_gradients(function):
    """(x, w, the upstream gradient, y = function(x, w)) after y's backward, on fixed random operands."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 128, generator=g, requires_grad=True)
    w = (0.02 * torch.randn(256, 128, generator=g)).requires_grad_()
    upstream = torch.randn(64, 256, generator=g)
    y = function.apply(x, w)
    (y.float() * upstream).sum().backward()
    return x, w, upstream, y


def test_fp8_product_and_gradients_match_fp32():
    x, w, upstream, y = product_with_gradients(FP8MatmulWeightT)
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y_ref = x_ref @ w_ref.t()
    (y_ref * upstream).sum().backward()
    assert y.dtype == torch.bfloat16 and y.shape == (64, 256)
    assert relative_error(y, y_ref) < 0.06
    assert relative_error(x.grad, x_ref.grad) < 0.15  # e5m2 gradients: 2 mantissa bits
    assert relative_error(w.grad, w_ref.grad) < 0.15
    assert w.grad.dtype == w.dtype


def test_fp8_head_switch():
    head = FP8Head(32, 48)
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(head(x), x @ head.weight.t())
    head.fp8 = True
    out = head(x)
    assert out.shape == (2, 16, 48) and relative_error(out, x @ head.weight.t()) < 0.06


def test_modern_model_trains_through_the_fp8_head():
    from kit.modeling.modern import MODERN_SIZES, ModernConfig, ModernGPT

    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], vocab_size=1024, max_seq_len=128, attn="dense"))  # small vocabulary: CPU FP8 is slow
    with torch.no_grad():
        model.lm_head.weight.normal_(0, 0.02)
    x, y = torch.randint(0, 1024, (2, 128)), torch.randint(0, 1024, (2, 128))
    plain = model(x, y)
    model.lm_head.fp8 = True
    fp8 = model(x, y)
    fp8.backward()
    assert abs(fp8.item() - plain.item()) < 0.01 * plain.item()
    assert model.lm_head.weight.grad is not None and torch.isfinite(model.lm_head.weight.grad).all()
    assert model.embed.weight.grad.abs().sum() > 0  # the gradient reached the trunk through the FP8 backward


def softcapped_reference(x, w, targets, cap=15.0):
    logits = x @ w.t()
    return torch.nn.functional.cross_entropy(cap * torch.tanh(logits / cap), targets)


def test_fused_fp8_head_loss_matches_the_fp32_reference():
    from kit.modeling.fp8 import FP8SoftcappedHeadLoss

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 64, generator=g, requires_grad=True)
    w = (0.3 * torch.randn(500, 64, generator=g)).requires_grad_()
    targets = torch.randint(0, 500, (96,), generator=g)
    loss = FP8SoftcappedHeadLoss.apply(x, w, targets, 15.0)
    (0.25 * loss).backward()  # an upstream factor, as gradient accumulation gives
    x_ref, w_ref = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    ref = softcapped_reference(x_ref, w_ref, targets)
    (0.25 * ref).backward()
    assert abs(loss.item() - ref.item()) < 0.02 * ref.item()
    assert relative_error(x.grad, x_ref.grad) < 0.15  # e5m2 gradients: 2 mantissa bits
    assert relative_error(w.grad, w_ref.grad) < 0.15
    assert w.grad.dtype == w.dtype


def test_fixed_gradient_scale_neither_saturates_nor_flushes_to_zero():
    """The logits' gradient is quantised with a known scale: its largest possible element maps
    under e5m2's maximum, and small softmax terms (1e-8 here) survive instead of flushing to zero."""
    from kit.modeling.fp8 import E5M2, E5M2_HEADROOM

    assert E5M2_HEADROOM < torch.finfo(E5M2).max
    small = (torch.tensor([1e-8, 1e-6, 0.5, -1.0]) * E5M2_HEADROOM).to(E5M2).float() / E5M2_HEADROOM
    assert (small != 0).all() and (small - torch.tensor([1e-8, 1e-6, 0.5, -1.0])).abs().max() < 0.13


def test_fp8_head_evaluates_with_the_exact_product():
    head = FP8Head(32, 48, fp8=True).eval()
    x = torch.randn(2, 16, 32)
    torch.testing.assert_close(head(x), x @ head.weight.t())


def test_fp8_forward_product_keeps_the_backward_exact():
    """The MLPs' FP8: the forward product within FP8's rounding of the exact one, the backward products
    exactly those of x @ w^T for the (bf16) gradient that reaches the product's bf16 output."""
    from kit.modeling.fp8 import FP8ForwardMatmulWeightT

    x, w, upstream, y = product_with_gradients(FP8ForwardMatmulWeightT)
    assert y.dtype == torch.bfloat16 and relative_error(y, x.detach() @ w.detach().t()) < 0.06
    reaching = upstream.to(y.dtype).float()  # the gradient as it reaches the product's output
    torch.testing.assert_close(x.grad, reaching @ w.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(w.grad, reaching.t() @ x.detach(), rtol=1e-5, atol=1e-6)


def test_fp8_mlp_switch_in_the_modern_model():
    """fp8_mlp: 'up' puts the up projections' forward product in FP8, 'both' the down projections' too; the FLOPs
    counted as FP8 are the head's and those forward products; training goes through; evaluation is exact."""
    import pytest

    from kit.modeling.fp8 import FP8ForwardLinear
    from kit.modeling.modern import MODERN_SIZES, ModernConfig, ModernGPT

    def model(mode):
        torch.manual_seed(0)
        return ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], vocab_size=1024, max_seq_len=128, attn="dense", fp8_mlp=mode))

    plain, up, both = model("off"), model("up"), model("both")
    assert [type(m) for m in (up.blocks[0].mlp.up, up.blocks[0].mlp.down, both.blocks[0].mlp.down)] == [FP8ForwardLinear, torch.nn.Linear, FP8ForwardLinear]
    width, layers = plain.config.n_embd, plain.config.n_layer
    assert plain.flops_now(128)[1] == 0 and up.flops_now(128)[1] == 2 * layers * 4 * width * width
    assert both.flops_now(128)[1] == 2 * up.flops_now(128)[1] and both.flops_now(128)[0] == plain.flops_now(128)[0]
    assert "MLP: FP8 forward products of both" in both.describe_paths() and "MLP: bf16" in plain.describe_paths()
    with torch.no_grad():
        for m in (plain, up, both):
            for p in m.parameters():
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))  # the same non-zero weights in each
    x, y = torch.randint(0, 1024, (2, 128)), torch.randint(0, 1024, (2, 128))
    loss, plain_loss = both(x, y), plain(x, y).item()
    loss.backward()
    assert abs(loss.item() - plain_loss) < 0.01 * plain_loss and both.blocks[0].mlp.up.weight.grad.abs().sum() > 0
    both.eval(), plain.eval()
    torch.testing.assert_close(both(x), plain(x))  # evaluation takes the exact products
    up_loss = up(x, y)  # an fp32 model without autocast: the FP8 up product comes back in fp32 for the plain down projection
    up_loss.backward()
    assert abs(up_loss.item() - plain_loss) < 0.01 * plain_loss and up.blocks[0].mlp.up.weight.grad.abs().sum() > 0
    assert up.blocks[0].mlp.up(torch.randn(3, width)).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert up.blocks[0].mlp.up(torch.randn(3, width)).dtype == torch.bfloat16
    with pytest.raises(ValueError, match="fp8_mlp"):
        model("down")


def check_compiled_fp8_up_model_trains_its_up_projections(device):
    """A model with --fp8-mlp up compiled whole under bf16 autocast (as the record trains it) gives its up
    projections the gradients the eager model gives: none lost between the FP8 forward and its exact backward."""
    import copy

    from kit.modeling.modern import MODERN_SIZES, ModernConfig, ModernGPT

    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], vocab_size=1024, max_seq_len=128, attn="dense", fp8_mlp="up")).to(device)
    with torch.no_grad():
        for p in model.parameters():  # zero-initialised projections would give the up weights no gradient at all
            if (p == 0).all():
                p.normal_(std=0.02)
    x, y = (torch.randint(0, 1024, (2, 128), device=device) for _ in range(2))
    grads = []
    for compiled in (False, True):
        copy_ = copy.deepcopy(model).train()
        with torch.autocast(device, dtype=torch.bfloat16):
            loss = (torch.compile(copy_) if compiled else copy_)(x, y)
        loss.float().backward()
        grads.append([block.mlp.up.weight.grad for block in copy_.blocks if block.mlp is not None])
    for eager, compiled in zip(*grads):
        assert compiled is not None and eager.abs().sum() > 0 and relative_error(compiled, eager) < 0.02


def test_compiled_fp8_up_model_trains_its_up_projections():
    check_compiled_fp8_up_model_trains_its_up_projections("cpu")


def test_loss_in_one_pass_trains_the_model_as_the_two_passes_do():
    """loss_one_pass: the FP8 head's loss computes its e5m2 gradient in the forward and keeps it instead of the logits:
    the same loss and gradients as the gradient computed in the backward; the kernel paths line says which runs, and
    that the bf16 head ignores it."""
    from kit.modeling.modern import MODERN_SIZES, ModernConfig, ModernGPT

    def model(**kw):
        torch.manual_seed(0)
        m = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], vocab_size=1024, max_seq_len=128, attn="dense", fused_loss=True, **kw))
        with torch.no_grad():
            for p in m.parameters():  # zero-initialised projections would leave the blocks without gradients
                if (p == 0).all():
                    p.normal_(std=0.05)
        return m

    x, y = torch.randint(0, 1024, (2, 128)), torch.randint(0, 1024, (2, 128))
    losses, grads = [], []
    for one_pass in (False, True):
        m = model(fp8_head=True, loss_one_pass=one_pass)
        loss = m(x, y)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in (m.lm_head.weight, m.blocks[0].attn.qkv.weight)])
    torch.testing.assert_close(losses[1], losses[0], rtol=0, atol=0)
    for one_pass_grad, grad in zip(*grads):
        assert grad.abs().sum() > 0
        torch.testing.assert_close(one_pass_grad, grad, rtol=1e-6, atol=0)
    assert "e5m2 gradient computed with the statistics in one pass" in model(fp8_head=True, loss_one_pass=True).describe_paths()
    assert "the one-pass gradient needs the FP8 head" in model(loss_one_pass=True).describe_paths()
