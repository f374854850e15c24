"""GPU-only checks of the CUDA paths the CPU suite cannot reach (skipped without CUDA). On a CUDA
machine: `python3 -m pytest -q tests/test_gpu.py` (about a minute)."""

import re
import subprocess
import sys

import pytest
import torch

from conftest import REPO, subprocess_env

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


def test_compiled_batched_newton_schulz_matches_eager():
    from kit.modeling.muon import Muon, newton_schulz

    torch.manual_seed(0)
    G = torch.randn(4, 3, 256, 128, device="cuda")
    for coefficients in ("quintic", "polar"):
        opt = Muon([torch.nn.Parameter(torch.zeros(4, 4, device="cuda"))], coefficients=coefficients)
        compiled, eager = opt.orthogonalise(G, 5), newton_schulz(G, 5, coefficients=coefficients)
        # bf16 rounding differs between the fused and eager kernels (3% apart for the quintic, 6% for
        # Polar Express on the H200, 2026-11-29): compare what matters, the band of singular values
        # both leave (within 0.011 there), and the direction loosely
        sv_compiled, sv_eager = (torch.linalg.svdvals(t.float()) for t in (compiled, eager))
        assert (sv_compiled.min() - sv_eager.min()).abs() < 0.03 and (sv_compiled.max() - sv_eager.max()).abs() < 0.03
        assert ((compiled - eager).norm() / eager.norm()).item() < 0.1


def tiny_compiled_speedrun(out_dir, data_dir, *extra):
    return tiny_compiled_run("train_gpt2_speedrun.py", out_dir, data_dir, *extra)


def tiny_compiled_run(script, out_dir, data_dir, *extra):
    """A tiny compiled run of a script on CUDA; fails on any recompilation after the warm-up."""
    cmd = [sys.executable, script, "--model-size", "tiny", "--data", "synthetic", "--seq-len", "256", "--compile", "1",
           "--batch-tokens", "1024", "--val-tokens", "1024", "--max-steps", "6", "--val-every", "3", "--export", "1",
           "--progress", "lines", "--out-dir", str(out_dir), *extra]
    result = subprocess.run(cmd, cwd=REPO, env=subprocess_env(KIT_DATA_DIR=data_dir, TORCH_LOGS="recompiles", PYTHONUNBUFFERED=1),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:]
    after_warmup = result.stdout.split("warm-up (compile, kernel set-up)", 1)[1]
    assert "Recompiling function" not in after_warmup, after_warmup[:3000]
    return result.stdout


def test_speedrun_on_cuda_uses_flex_and_does_not_recompile_after_warm_up(tmp_path, isolated_data_dir):
    assert "FlexAttention (block-sparse, compiled)" in tiny_compiled_speedrun(tmp_path, isolated_data_dir)


def test_speedrun_with_the_embedding_tied_then_apart_compiles_both_in_the_warm_up(tmp_path, isolated_data_dir):
    """--tie-embed-until: the warm-up compiles the tied and the untied graph, training and evaluation alike, so
    untying before step 6 and validating at steps 3 (tied) and 6 (untied) recompiles nothing (the FP8 head where the GPU has it)."""
    from safetensors.torch import load_file

    tiny_compiled_speedrun(tmp_path, isolated_data_dir, "--tie-embed-until", "0.67")
    assert not bool(load_file(str(tmp_path / "model.safetensors"))["embed_is_tied"])


def test_layerdrop_compiled_by_regions_never_recompiles_whatever_it_drops(tmp_path, isolated_data_dir):
    import json

    tiny_compiled_run("train_gpt2_layerdrop.py", tmp_path, isolated_data_dir, "--layerdrop", "0.5")
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert isinstance(summary["alloc_retries"], int)  # the allocator's retries, read on CUDA
    assert 0 <= summary["alloc_retries_in_loop"] <= summary["alloc_retries"]  # and those of the training loop


def test_fused_norm_model_compiled_by_inductor_equals_the_baseline_on_cuda():
    from test_ideas import check_fused_norm_model_equals_the_baseline

    check_fused_norm_model_equals_the_baseline(compiled=True, device="cuda")


def test_triton_loss_kernels_on_cuda_equal_the_reference():
    pytest.importorskip("triton")
    from test_triton_loss import KERNEL_CHECKS

    checks = {}
    exec(KERNEL_CHECKS, checks)
    checks["check_kernels"]("cuda")
    checks["check_kernels"]("cuda", n=2048, v=50304)  # the real vocabulary: 393 column tiles
    checks["check_losses_through_autograd"]("cuda", v=512)
    checks["check_multi_target_kernels"]("cuda")
    checks["check_multi_target_kernels"]("cuda", n=2048, v=50304)
    checks["check_one_pass_kernel"]("cuda")
    checks["check_one_pass_kernel"]("cuda", n=2048, v=50304)


def test_loss_kernel_benchmark_times_every_config(tmp_path):
    """scripts/bench_loss_kernels.py at the record's loss (three weighted targets, the sigmoid cap): every config of the
    statistics, the gradient and both in one pass, the autotuned ops and the references."""
    pytest.importorskip("triton")
    import json

    from kit.modeling import triton_loss

    result = subprocess.run([sys.executable, "scripts/bench_loss_kernels.py", "--rows", "1024", "--vocab", "4096", "--out", str(tmp_path)],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = json.loads((tmp_path / "bench_loss_kernels.json").read_text())["results"]
    assert len(rows) == 2 + 2 * len(triton_loss.STATS_CONFIGS) + len(triton_loss.GRAD_CONFIGS) + 4 and all(row["ms"] > 0 for row in rows)


def test_triton_mlp_kernels_on_cuda_equal_the_reference():
    """The fused ReLU^2 MLP's kernels with odd sizes and at the record's shapes (width 768, 3072 hidden; the GPU's
    autotuned tiles), and through autograd in bf16 against the plain MLP: with pointer loads, and on sm90 with TMA
    loads too."""
    pytest.importorskip("triton")
    from kit.modeling import triton_mlp
    from test_triton_mlp import KERNEL_CHECKS

    checks = {}
    exec(KERNEL_CHECKS, checks)
    probe = torch.empty(64, 64, dtype=torch.bfloat16, device="cuda")
    loads = ("pointers", "tma") if triton_mlp.tma_loads("cuda", probe) else ("pointers",)
    try:
        for mode in loads:
            triton_mlp.LOADS = mode
            checks["check_kernels"]("cuda")
            checks["check_kernels"]("cuda", m=4096, k=768, n=3072)
            checks["check_function_against_autograd"]("cuda", torch.bfloat16, 2.0 ** -6)
    finally:
        triton_mlp.LOADS = "auto"


def test_mlp_kernel_benchmark_times_every_tile_of_the_card(tmp_path):
    pytest.importorskip("triton")
    import json

    from kit.core import gpus
    from kit.modeling import triton_mlp

    result = subprocess.run([sys.executable, "scripts/bench_mlp_kernels.py", "--rows", "2048", "--width", "256", "--out", str(tmp_path)],
                            cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = json.loads((tmp_path / "bench_mlp_kernels.json").read_text())["results"]
    tiles = triton_mlp.SMALL_TILES if gpus.small_shared_memory(torch.cuda.get_device_capability()) else triton_mlp.LARGE_TILES
    probe = torch.empty(64, 64, dtype=torch.bfloat16, device="cuda")
    tma_rows = 2 * len(triton_mlp.TMA_TILES) + 3 if triton_mlp.tma_loads("cuda", probe) else 0  # sm90: its TMA tiles and ops too
    assert len(rows) == 3 + 2 * len(tiles) + 3 + tma_rows and all(row["ms"] > 0 for row in rows)


def test_flex_attention_benchmark_times_the_default_and_checks_each_candidate(tmp_path):
    import json

    result = subprocess.run([sys.executable, "scripts/bench_flex_attention.py", "--batch", "1", "--seq-len", "2048", "--only", "tma",
                             "--out", str(tmp_path)], cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:]
    rows = json.loads((tmp_path / "bench_flex_attention.json").read_text())["results"]
    assert rows[0]["kernel"] == "default: forward (max diff from the default 0.00e+00)" and rows[0]["percent_of_default"] == 100
    assert len(rows) in (2, 4) and all(row["ms"] > 0 for row in rows)  # 2: this torch has no TMA flex loads (the output says why)


def test_speedrun_with_the_triton_mlp_trains_like_pytorchs(tmp_path, isolated_data_dir):
    """--mlp-kernel triton in the whole-model compile (custom ops): no recompiles, the same final loss as the plain MLP."""
    pytest.importorskip("triton")
    final = re.compile(r"final val loss ([0-9.]+)")
    pytorch = tiny_compiled_speedrun(tmp_path / "torch", isolated_data_dir)
    fused = tiny_compiled_speedrun(tmp_path / "triton", isolated_data_dir, "--mlp-kernel", "triton")
    assert "relu^2 inside the up projection's Triton product" in fused and "relu^2 inside" not in pytorch
    assert abs(float(final.search(fused).group(1)) - float(final.search(pytorch).group(1))) < 0.02


def test_compiled_fp8_up_model_trains_its_up_projections_on_cuda():
    """A compiled run of --fp8-mlp up once trained far worse on an H200 while this check passed on the CPU: here it
    runs with the GPU's kernels (FP8 where the GPU has it); the up projections' gradients, compiled and eager, agree."""
    from test_fp8 import check_compiled_fp8_up_model_trains_its_up_projections

    check_compiled_fp8_up_model_trains_its_up_projections("cuda")


def test_cautious_decay_adam_compiled_on_cuda_steps_as_on_the_cpu():
    """The compiled update (one graph for any shape after the warm-up) against the eager one on the CPU."""
    from kit.modeling.optim import CautiousDecayAdam

    g = torch.Generator().manual_seed(0)
    start, grads = torch.randn(300, 64, generator=g), [torch.randn(300, 64, generator=g) for _ in range(3)]
    results = []
    for device in ("cpu", "cuda"):
        p = torch.nn.Parameter(start.clone().to(device))
        opt = CautiousDecayAdam([{"params": [p], "lr": 0.05, "base_lr": 0.1, "cautious_wd": 0.2}], betas=(0.8, 0.95), fused=device == "cuda")
        opt.warm_up()
        for grad in grads:
            p.grad = grad.to(device)
            opt.step()
        results.append(p.detach().cpu())
    torch.testing.assert_close(results[1], results[0], rtol=1e-5, atol=1e-6)


def test_speedrun_with_triton_loss_kernels_trains_like_pytorchs(tmp_path, isolated_data_dir):
    """Whole-model compile with the kernels as custom ops (the default where Triton runs): no
    recompiles, and the same final loss as the PyTorch kernels."""
    pytest.importorskip("triton")
    final = re.compile(r"final val loss ([0-9.]+)")
    pytorch = tiny_compiled_speedrun(tmp_path / "torch", isolated_data_dir, "--loss-kernel", "torch")
    triton = tiny_compiled_speedrun(tmp_path / "triton", isolated_data_dir)
    assert "Triton kernels" in triton and "Triton kernels" not in pytorch
    assert abs(float(final.search(triton).group(1)) - float(final.search(pytorch).group(1))) < 0.02


def test_cached_generation_on_cuda_equals_recomputation():
    from kit.tools.inference import generate
    from kit.modeling.model import GPT, gpt_config

    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", block_size=128)).cuda().eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    prompts = [[50256, 11, 22, 33], [50256, 5, 6, 7, 8, 9, 10]]
    reference = generate(model, prompts, 20, cache="none")
    assert generate(model, prompts, 20, cache="paged") == reference
    assert generate(model, prompts, 20, cache="contiguous") == reference
    assert generate(model, prompts, 20, cache="static") == reference  # decoding replays a CUDA graph


def test_static_decoding_graph_replays_what_it_computes_eagerly():
    from kit.tools.inference import StaticDecoder, forward_cached, make_cache
    from kit.modeling.model import GPT, gpt_config

    torch.manual_seed(0)
    model = GPT(gpt_config("tiny", block_size=128)).cuda().eval()
    idx = torch.randint(0, 50257, (3, 40), device="cuda")
    logits = {}
    with torch.autocast("cuda", dtype=torch.bfloat16):  # as the inference benchmark runs it
        for graph in (False, True):
            cache = make_cache(model, "static", sequences=3, max_len=40)
            sids = [cache.add_sequence() for _ in range(3)]
            forward_cached(model, idx[:, :30], cache, sids)
            decoder = StaticDecoder(model, cache, graph=graph)
            assert (decoder.graph is not None) == graph
            logits[graph] = torch.stack([decoder(idx[:, t].tolist(), sids) for t in range(30, 40)], 1)
    # the same kernels on the same inputs; a tolerance of bf16 rounding in case a library picks another algorithm under capture
    torch.testing.assert_close(logits[True].float(), logits[False].float(), atol=2e-2, rtol=2e-2)


def test_moe_grouped_kernel_runs_compiled_on_this_gpu_and_matches_the_padded_one(tmp_path, isolated_data_dir):
    from train_gpt2_moe import MoEMLP, grouped_mm_support

    why_not = grouped_mm_support(torch.device("cuda"), torch.bfloat16, compiled=True)
    if why_not:  # the script falls back to the padded kernel here, saying this
        pytest.skip(why_not)
    torch.manual_seed(0)
    grouped = MoEMLP(256, 4, 1, 0.0, kernel="grouped").cuda()
    padded = MoEMLP(256, 4, 1, 0.0).cuda()
    padded.load_state_dict(grouped.state_dict())
    x = torch.randn(8, 128, 256, device="cuda")
    with torch.autocast("cuda", torch.bfloat16):
        fast, reference = torch.compile(grouped, fullgraph=True)(x), padded(x)
    assert ((fast.float() - reference.float()).norm() / reference.float().norm()).item() < 0.02  # both bf16, different kernels
    console = tiny_compiled_run("train_gpt2_moe.py", tmp_path, isolated_data_dir, "--experts", "4", "--capacity-factor", "0",
                                "--expert-kernel", "grouped")
    assert "expert kernel: grouped matmul" in console  # and no recompiles after the warm-up (checked by tiny_compiled_run)


@pytest.mark.parametrize("shape", [(4, 1, 128, 512, 64, 64), (8, 2, 12, 256, 32, 64), (2, 1, 12, 256, 32, 1024)])
def test_mla_decode_kernel_in_bf16_equals_the_reference(shape):
    """(batch, s_q, heads, latent, rotary, page): the DeepSeek shape, the GPT-2 MLA model's, and a
    contiguous cache (one 1024-slot page per sequence); ragged lengths, shuffled pages, bf16."""
    from kit.modeling import mla_decode

    batch, s_q, heads, latent, rope, page = shape
    torch.manual_seed(0)
    lengths = torch.randint(s_q, 1000, (batch,), dtype=torch.int32)
    per = -(-1000 // page)
    table = torch.randperm(batch * per, dtype=torch.int32).view(batch, per).cuda()
    latent_cache = torch.randn(batch * per, page, latent, device="cuda", dtype=torch.bfloat16)
    rope_cache = torch.randn(batch * per, page, rope, device="cuda", dtype=torch.bfloat16)
    q = torch.randn(batch, s_q, heads, latent + rope, device="cuda", dtype=torch.bfloat16)
    args = (q, latent_cache, rope_cache, table, lengths.cuda(), (latent + rope) ** -0.5)
    ref = mla_decode.reference(*args).float()
    for splits in (0, 1, 7):
        out = mla_decode.mla_decode(*args, splits=splits).float()
        assert (out - ref).abs().max().item() < 2e-2, (shape, splits)
