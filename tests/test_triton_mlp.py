"""The fused ReLU^2 MLP (kit/modeling/triton_mlp.py): its two kernels against a float64 reference under Triton's CPU
interpreter (the same checks run on a GPU in tests/test_gpu.py), its backward against autograd's on the plain MLP, and the
switch in the model and the record script."""

import pytest
import torch

from conftest import run_interpreted

# Checks shared with the GPU test: each raises AssertionError on a mismatch.
KERNEL_CHECKS = r'''
import torch
from kit.modeling import triton_mlp


def relative_error(got, want):
    return ((got.double() - want).abs().max() / want.abs().max()).item()


def within_a_bf16_step(got, want, summed=0.0):
    """Each element within one bf16 step (2^-7 of itself) of the exact value, plus what the fp32 sums may have lost
    (`summed`): bf16 keeps 8 significant bits, and Triton's CPU interpreter rounds toward zero where a GPU rounds
    to nearest."""
    return bool(((got.double() - want).abs() <= 2.0 ** -7 * want.abs() + summed + 1e-30).all())


def sum_error_bound(a, b):
    """How far fp32 sums of the products a @ b may be from the exact ones: k 2^-24 sum_i |a_i b_i| (the classic
    bound for k terms). A product that nearly cancels (h ~ 1e-4 from terms of ~1) keeps no relative precision."""
    return a.size(1) * 2.0 ** -24 * (a.double().abs() @ b.double().abs())


def check_kernels(device, m=70, k=48, n=96):
    """relu(x w^T)^2 and (dy w_down) * 2 sqrt(a) in bf16, against float64 products of the same bf16 inputs. Odd sizes
    leave partial tiles in every direction."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(m, k, generator=g).bfloat16().to(device)
    w = (0.2 * torch.randn(n, k, generator=g)).bfloat16().to(device)
    a = triton_mlp.relu_square_up(x, w)
    h, h_error = x.double() @ w.double().t(), sum_error_bound(x, w.t())
    want = torch.relu(h).square()
    assert a.dtype == torch.bfloat16 and a.shape == (m, n) and within_a_bf16_step(a, want, 2 * h.abs() * h_error + h_error ** 2)
    assert (a[h < -h_error] == 0).all()  # relu's zeros stay exact
    dy = torch.randn(m, k, generator=g).bfloat16().to(device)
    w_down = (0.2 * torch.randn(k, n, generator=g)).bfloat16().to(device)
    dh = triton_mlp.relu_square_up_grad(dy, w_down, a)
    root = a.double().sqrt()
    want = (dy.double() @ w_down.double()) * 2 * root
    assert dh.dtype == torch.bfloat16 and dh.shape == (m, n) and within_a_bf16_step(dh, want, 2 * root * sum_error_bound(dy, w_down))


def check_function_against_autograd(device, dtype=torch.float32, tolerance=1e-5):
    """relu2_mlp's output and gradients against autograd through the plain MLP: dh = (dy w_down) * 2 sqrt(a) is
    relu^2's derivative, 2 relu(h), times the incoming gradient, with relu(h) recovered from a = relu(h)^2."""
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(3, 10, 32, generator=g).to(device, dtype)
    w_up0, w_down0 = 0.2 * torch.randn(128, 32, generator=g).to(device), 0.2 * torch.randn(32, 128, generator=g).to(device)
    upstream = torch.randn(3, 10, 32, generator=g).to(device, dtype)
    results = []
    for fused in (True, False):
        x, w_up, w_down = (t.clone().requires_grad_() for t in (x0, w_up0, w_down0))
        if fused:
            y = triton_mlp.relu2_mlp(x, w_up, w_down)
        else:
            y = torch.relu(x @ w_up.to(dtype).t()).square() @ w_down.to(dtype).t()
        (y * upstream).sum().backward()
        results.append((y, x.grad, w_up.grad, w_down.grad))
    for name, got, want in zip(("y", "grad x", "grad w_up", "grad w_down"), *results):
        assert got.dtype == want.dtype and got.shape == want.shape, name
        assert relative_error(got, want.double()) < tolerance, (name, relative_error(got, want.double()))
'''

INTERPRETED_CHECKS = {
    "kernels": "check_kernels('cpu'); check_kernels('cpu', m=64, k=64, n=64)",
    "function": "check_function_against_autograd('cpu', torch.bfloat16, 2.0 ** -6)",
    # the same through tensor descriptors (the sm90 path; the interpreter runs their loads, zeros outside the tensors)
    "kernels, TMA loads": "triton_mlp.LOADS = 'tma'; check_kernels('cpu'); check_kernels('cpu', m=64, k=64, n=64)",
    "function, TMA loads": "triton_mlp.LOADS = 'tma'; check_function_against_autograd('cpu', torch.bfloat16, 2.0 ** -6)",
}


@pytest.fixture(scope="module")
def interpreted():
    """{check name: "ok" or its traceback}, from one child process under Triton's CPU interpreter."""
    pytest.importorskip("triton", reason="Triton is not installed (GPU builds of PyTorch ship it; requirements-dev.txt adds it for CI)")
    return run_interpreted(KERNEL_CHECKS, INTERPRETED_CHECKS)


def test_kernels_and_the_fused_function_equal_the_reference_in_the_interpreter(interpreted):
    """Both kernels, partial tiles and whole ones, and the fused MLP through autograd in bf16 with the kernels, their
    tiles loaded through pointers and through tensor descriptors (TMA)."""
    for check in INTERPRETED_CHECKS:
        assert interpreted[check] == "ok", (check, interpreted[check])


def test_tma_loads_only_on_sm90_with_aligned_tensors(monkeypatch):
    """TMA where the GPU has it and the large shared memory (sm90/sm100, not an sm86/sm89/sm120 card or a run emulating one) and
    every tensor starts and steps its rows on 16 bytes; pointer loads elsewhere; LOADS overrides either way."""
    pytest.importorskip("triton")
    from kit.core import gpus
    from kit.modeling import triton_mlp

    if triton_mlp.TensorDescriptor is None:
        pytest.skip("this Triton has no host-side tensor descriptors")
    aligned, odd_rows = torch.zeros(64, 64, dtype=torch.bfloat16), torch.zeros(64, 7, dtype=torch.bfloat16)
    offset = torch.zeros(64 * 64 + 1, dtype=torch.bfloat16)[1:].view(64, 64)  # starts 2 bytes into its storage
    capability = {}
    monkeypatch.setattr(gpus, "capability", lambda device: capability["cap"])
    for cap, tensors, want in [((9, 0), (aligned,), True), ((10, 0), (aligned, aligned), True), ((8, 9), (aligned,), False),
                               ((8, 6), (aligned,), False), ((8, 0), (aligned,), False), ((12, 0), (aligned,), False), (None, (aligned,), False),
                               ((9, 0), (aligned, odd_rows), False), ((9, 0), (offset,), False)]:
        capability["cap"] = cap
        assert triton_mlp.tma_loads("cuda", *tensors) is want, (cap, [t.shape for t in tensors])
    capability["cap"] = (9, 0)
    for loads, want in (("pointers", False), ("tma", True)):
        monkeypatch.setattr(triton_mlp, "LOADS", loads)
        assert triton_mlp.tma_loads("cuda", odd_rows) is want
    assert triton_mlp.describe_loads("cuda") == "TMA tile loads (sm90)"


def test_autotuning_chooses_a_tile_per_row_count():
    """The autotuners key on the rows M too: a tile chosen (and kept on disk) at one row count is not reused at another."""
    pytest.importorskip("triton")
    from kit.modeling import triton_mlp

    for tuned in triton_mlp._TUNED.values():
        assert set(tuned.keys) == {"M", "N", "K", "B_ROWS_ARE_N", "EPILOGUE"}


def test_fused_function_without_triton_is_autograds_plain_mlp():
    """Where Triton cannot run (a CPU without the interpreter), relu2_mlp takes the same products in PyTorch: in fp32
    its output and gradients equal autograd's through the plain MLP."""
    checks = {}
    exec(KERNEL_CHECKS, checks)
    checks["check_function_against_autograd"]("cpu")


def test_model_with_the_fused_mlp_trains_as_the_plain_one():
    """mlp_kernel triton: the same loss and gradients as the plain MLP while training, the plain Linears in evaluation;
    FP8 up projections are refused beside it; the log line names the path."""
    from kit.modeling.modern import MODERN_SIZES, ModernConfig, ModernGPT

    def model(**kw):
        torch.manual_seed(0)
        m = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], vocab_size=512, max_seq_len=128, attn="dense", **kw))
        with torch.no_grad():
            for p in m.parameters():  # non-zero weights everywhere (the head and output projections start at zero)
                p.add_(0.02 * torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())))
        return m

    plain, fused = model(), model(mlp_kernel="triton")
    x, y = torch.randint(0, 512, (2, 128)), torch.randint(0, 512, (2, 128))
    for m in (plain, fused):
        m(x, y).backward()
    torch.testing.assert_close(fused(x, y), plain(x, y))
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-6, msg=name)
    assert fused.blocks[0].mlp.up.weight.grad.abs().sum() > 0
    plain.eval(), fused.eval()
    assert torch.equal(fused(x), plain(x))
    assert "relu^2 inside the up projection's Triton product" in fused.describe_paths() or "Triton cannot run here" in fused.describe_paths()
    with pytest.raises(ValueError, match="choose one"):
        model(mlp_kernel="triton", fp8_mlp="up")


def test_record_script_mlp_kernel_choice(monkeypatch):
    """--mlp-kernel auto takes PyTorch's MLP where Triton cannot run and beside FP8 up projections; triton with FP8 up
    projections is a clear error; a run on a 24 GB card audits the MLP kernels' small tiles."""
    import train_gpt2_speedrun as sr
    from kit.core import gpus
    from kit.core.errors import UserError
    from kit.modeling import triton_mlp

    assert sr.mlp_kernel(sr.Hyperparameters(device="cpu", mlp_kernel="auto")) == "torch"
    assert sr.mlp_kernel(sr.Hyperparameters(device="cpu", mlp_kernel="triton")) == "triton"  # PyTorch's products stand in
    with pytest.raises(UserError, match="choose one"):
        sr.build_model(sr.Hyperparameters(device="cpu", model_size="tiny", mlp_kernel="triton", fp8_mlp="up"))
    monkeypatch.setattr(sr, "on_gpu", lambda cfg: True)
    monkeypatch.setattr(triton_mlp, "available", lambda device: True)
    assert sr.mlp_kernel(sr.Hyperparameters(mlp_kernel="auto")) == "triton"
    assert sr.mlp_kernel(sr.Hyperparameters(mlp_kernel="auto", fp8_mlp="up")) == "torch"
    trainer = sr.SpeedrunTrainer.__new__(sr.SpeedrunTrainer)
    trainer.cfg, trainer.device = sr.Hyperparameters(mlp_kernel="triton", loss_kernel="torch"), torch.device("cuda")
    monkeypatch.setattr(gpus, "capability", lambda device: (8, 9))
    names = [build[0] for build in trainer.own_kernel_builds()]
    assert names == [build[0] for build in triton_mlp.kernel_builds(small_shared_memory=True)] and len(names) == 2 * len(triton_mlp.SMALL_TILES)
