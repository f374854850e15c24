"""The "what to try" ideas of the notes: each proves on the CPU that it does what it says."""

import copy
import json
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from conftest import FAST, read_metrics
from kit.modeling.model import GPT, gpt_config
from kit.modeling.optim import warmup_cosine
from kit.data.tokenizer import gpt2_encoding
from kit.loop.train import main


def tiny_gpt(**overrides):
    torch.manual_seed(0)
    return GPT(gpt_config("tiny", block_size=32, **overrides))


def grads_of(model, idx):
    model.zero_grad()
    model(idx, torch.roll(idx, -1, 1)).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}


# ----- gradient checkpointing -----

def test_checkpointed_blocks_give_the_same_gradients(monkeypatch):
    import train_gpt2_checkpointing as script

    plain = tiny_gpt()
    checkpointed = script.CheckpointedGPT(copy.deepcopy(plain.config))
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.checkpoint_layers = 2
    idx = torch.randint(0, 50257, (2, 32))
    calls = []
    original = torch.utils.checkpoint.checkpoint
    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", lambda *a, **k: calls.append(1) or original(*a, **k))
    a, b = grads_of(plain, idx), grads_of(checkpointed, idx)
    assert len(calls) == 2  # both blocks of the checkpointed model, none of the plain one
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-5, msg=name)


def test_checkpointing_with_the_chunked_loss_gives_the_baselines_loss_and_gradients():
    import train_gpt2_checkpointing as script

    cfg = script.Hyperparameters(model_size="tiny", seq_len=32, ce_chunk=24)
    torch.manual_seed(0)
    both = script.build_model(cfg)
    assert both.checkpoint_layers == both.config.n_layer and both.ce_chunk == 24
    plain = GPT(copy.deepcopy(both.config))
    plain.load_state_dict(both.state_dict())
    idx = torch.randint(0, 50257, (2, 32))
    targets = torch.roll(idx, -1, 1)
    torch.testing.assert_close(both(idx, targets), plain(idx, targets), atol=1e-5, rtol=1e-5)
    a, b = grads_of(plain, idx), grads_of(both, idx)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


def losses(run_dir, kind="train"):
    return [e["loss" if kind == "train" else "val_loss"] for e in read_metrics(run_dir, kind)]


def baseline_losses(tmp_path, flags):
    """The baseline's training and validation losses for these flags (same seed and data)."""
    import train_gpt2

    assert main(train_gpt2.RECIPE, [*flags, "--out-dir", str(tmp_path / "baseline")]) == 0
    return losses(tmp_path / "baseline"), losses(tmp_path / "baseline", "val")


def test_checkpointing_script_trains_exactly_like_the_baseline(tmp_path):
    """Recomputing the blocks in the backward pass saves memory and changes no number."""
    import train_gpt2_checkpointing as script

    flags = [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "3"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path / "ckpt")]) == 0
    train, val = baseline_losses(tmp_path, flags)
    assert losses(tmp_path / "ckpt") == pytest.approx(train, rel=1e-6) and losses(tmp_path / "ckpt", "val") == pytest.approx(val, rel=1e-6)


# ----- chunked cross-entropy -----

@pytest.mark.parametrize("chunk", [7, 64, 1000])
def test_chunked_cross_entropy_equals_the_full_one_with_gradients(chunk):
    from kit.modeling.losses import chunked_linear_cross_entropy

    torch.manual_seed(0)
    h = torch.randn(50, 16, requires_grad=True)
    weight = torch.randn(300, 16, requires_grad=True)
    targets = torch.randint(0, 300, (50,))
    full = torch.nn.functional.cross_entropy(h @ weight.t(), targets)
    full.backward()
    ref = h.grad.clone(), weight.grad.clone()
    h.grad, weight.grad = None, None
    chunked = chunked_linear_cross_entropy(h, weight, targets, chunk)
    (2 * chunked).backward()  # a scaled upstream gradient is passed through
    torch.testing.assert_close(chunked, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(h.grad, 2 * ref[0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(weight.grad, 2 * ref[1], atol=1e-5, rtol=1e-5)


def test_chunked_loss_model_matches_the_baseline_and_trains(tmp_path):
    import train_gpt2_chunked_ce as script

    plain = tiny_gpt()
    chunked = script.ChunkedLossGPT(gpt_config("tiny", block_size=32), ce_chunk=10)
    chunked.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 50257, (2, 32))
    a, b = grads_of(plain, idx), grads_of(chunked, idx)
    for name in a:  # tied embeddings: the head's gradient lands in wte.weight in both
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)
    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "3", "--out-dir", str(tmp_path)]) == 0


# ----- fused residual add + LayerNorm -----

def check_fused_norm_model_equals_the_baseline(compiled: bool, device: str = "cpu") -> None:
    """FusedNormGPT against the baseline GPT with the same weights: hidden states and every gradient."""
    from train_gpt2_fused_norm import FusedNormGPT

    plain = tiny_gpt().to(device)
    with torch.no_grad():  # distinct norms, so that a fusion with the wrong LayerNorm shows
        for module in plain.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.uniform_(0.5, 1.5), module.bias.uniform_(-0.5, 0.5)
    fused = FusedNormGPT(gpt_config("tiny", block_size=32), compiled=compiled).to(device)
    fused.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 50257, (2, 32), device=device)
    torch.testing.assert_close(fused.hidden(idx), plain.hidden(idx), atol=1e-5, rtol=1e-5)
    a, b = grads_of(plain, idx), grads_of(fused, idx)
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-5, rtol=1e-4, msg=name)


def trace_fused_norm_without_inductor(monkeypatch):
    """The script's compiled add + LayerNorm through Dynamo and AOTAutograd (graph breaks fail), without
    Inductor's C++ code generation: ~25 s on two cores. Inductor's kernel itself: tests/test_gpu.py, on CUDA."""
    import train_gpt2_fused_norm as script

    monkeypatch.setattr(script, "compiled_add_layer_norm", torch.compile(script.add_layer_norm, backend="aot_eager", fullgraph=True))


@pytest.mark.parametrize("compiled", [False, True])
def test_fused_norm_model_is_the_baseline_with_equal_gradients(compiled, monkeypatch):
    trace_fused_norm_without_inductor(monkeypatch)
    check_fused_norm_model_equals_the_baseline(compiled)


def test_fused_norm_script_trains_like_the_baseline(tmp_path, monkeypatch):
    """The script, its add + LayerNorm compiled, logs the baseline's losses (the same sums in another order)."""
    import train_gpt2_fused_norm as script

    trace_fused_norm_without_inductor(monkeypatch)
    flags = [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "3"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path / "fused")]) == 0
    train, val = baseline_losses(tmp_path, flags)
    assert losses(tmp_path / "fused") == pytest.approx(train, rel=1e-5) and losses(tmp_path / "fused", "val") == pytest.approx(val, rel=1e-5)


# ----- optimizers -----

def test_8bit_adamw_follows_adamw_where_bitsandbytes_installs():
    bnb = pytest.importorskip("bitsandbytes")  # not in CI (bitsandbytes needs CUDA)
    torch.manual_seed(0)
    exact = torch.nn.Parameter(torch.randn(256, 64))  # >= 4096 elements: bitsandbytes quantises only those
    quantised = torch.nn.Parameter(exact.detach().clone())
    adamw = torch.optim.AdamW([exact], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    adamw8 = bnb.optim.AdamW8bit([quantised], lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    start = exact.detach().clone()
    for _ in range(5):
        g = torch.randn_like(exact)
        exact.grad, quantised.grad = g.clone(), g.clone()
        adamw.step(), adamw8.step()
    moved, gap = (exact - start).norm(), (quantised - exact).norm()
    assert adamw8.state[quantised]["state1"].dtype == torch.uint8  # the moments are 8-bit
    assert gap < 0.05 * moved  # the same steps, within the 8-bit moments' rounding


def test_lion_step_by_hand():
    from kit.modeling.optim import Lion

    p = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
    opt = Lion([p], lr=0.1, betas=(0.9, 0.99), weight_decay=0.5)
    grads = [torch.tensor([0.3, -0.1, 0.0]), torch.tensor([-1.0, 0.2, 0.4])]
    w, m = p.detach().clone(), torch.zeros(3)
    for g in grads:
        p.grad = g.clone()
        opt.step()
        w = w * (1 - 0.1 * 0.5) - 0.1 * torch.sign(0.9 * m + 0.1 * g)
        m = 0.99 * m + 0.01 * g
        torch.testing.assert_close(p.detach(), w)
    torch.testing.assert_close(opt.state[p]["exp_avg"], m)


def test_optimizer_shadow_compares_two_update_rules_on_the_same_gradients(tmp_path):
    """The same optimizer twice takes the same steps (ratio 1, cosine 1); Lion's sign steps differ from AdamW's."""
    from conftest import load_module, make_shard

    shadow = load_module("scripts/optimizer_shadow.py", "optimizer_shadow")
    make_shard(tmp_path / "train.bin", 20_000)
    common = ["--model-size", "tiny", "--device", "cpu", "--lr", "1e-3"]
    same = shadow.main(["--data-file", str(tmp_path / "train.bin"), "--b", "--optimizer adamw", "--steps", "6", "--window", "3",
                        "--batch-seqs", "2", "--out", str(tmp_path / "same.json"), "--", *common])
    figures = json.loads((tmp_path / "same.json").read_text())["figures"]
    assert set(figures) == {"embedding (tied head)", "positions", "matrices", "biases/gains"}
    for kind in figures.values():
        assert kind["ratio"] == pytest.approx(1.0, abs=1e-6) and kind["cosine"] == pytest.approx(1.0, abs=1e-6)
    assert "| matrices | 1.000 | 1.0000 |" in same
    shadow.main(["--data-file", str(tmp_path / "train.bin"), "--b", "--optimizer lion --lion-lr 1e-3", "--steps", "6", "--window", "3",
                 "--batch-seqs", "2", "--out", str(tmp_path / "lion.json"), "--", *common])
    lion = json.loads((tmp_path / "lion.json").read_text())["figures"]["matrices"]
    assert lion["cosine"] < 0.99 and abs(lion["ratio"] - 1) > 0.01


def test_optimizer_script_runs_lion_and_explains_a_missing_bitsandbytes(tmp_path, capsys, monkeypatch):
    import train_gpt2_optimizers as script

    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "3", "--out-dir", str(tmp_path / "lion")]) == 0
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # its import fails here whether or not it is installed
    code = main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "1", "--optimizer", "adamw8bit", "--out-dir", str(tmp_path / "bnb")])
    err = capsys.readouterr().err
    assert code == 2 and "needs bitsandbytes" in err and "import of bitsandbytes halted" in err  # the cause is shown


def test_muon_reference_takes_each_block_matrix_once_and_adamw_the_rest(tmp_path):
    import train_gpt2_optimizers as script

    from kit.modeling.muon import Muon

    model = tiny_gpt()
    adam, muon = script.muon_and_adamw(model, script.Hyperparameters(optimizer="muon"))
    assert isinstance(muon, Muon) and isinstance(adam, torch.optim.AdamW)
    on_muon = [p for g in muon.param_groups for p in g["params"]]
    on_adam = [p for g in adam.param_groups for p in g["params"]]
    block_matrices = {id(p) for p in model.h.parameters() if p.dim() == 2}
    assert {id(p) for p in on_muon} == block_matrices and len(on_muon) == len(block_matrices)
    assert not block_matrices & {id(p) for p in on_adam}  # no parameter stepped twice
    assert {id(p) for p in on_muon} | {id(p) for p in on_adam} == {id(p) for p in model.parameters()}  # none left out
    assert [g["split"] for g in muon.param_groups] == [3, 1]  # Q, K and V orthogonalised apart
    assert model.wte.weight in on_adam and model.lm_head.weight in on_adam  # the tied embedding and head
    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "3", "--optimizer", "muon",
                                "--out-dir", str(tmp_path)]) == 0


# ----- LayerDrop -----

def layerdrop_pair(p=0.5):
    import train_gpt2_layerdrop as script

    plain = tiny_gpt()
    dropping = script.LayerDropGPT(gpt_config("tiny", block_size=32), p, seed=0)
    dropping.load_state_dict(plain.state_dict())
    return plain, dropping


def test_layerdrop_skips_the_drawn_blocks_and_rescales_the_kept_ones():
    plain, dropping = layerdrop_pair(0.5)  # p = 0.25 for block 0, 0.5 for block 1
    idx = torch.randint(0, 50257, (2, 32))
    dropping.dropped_blocks = lambda: {1}
    x = plain.wte(idx) + plain.wpe(torch.arange(32))
    expected = plain.ln_f(x + (plain.h[0](x) - x) / 0.75)
    torch.testing.assert_close(dropping.hidden(idx), expected)
    dropping.dropped_blocks = lambda: {0, 1}
    torch.testing.assert_close(dropping.hidden(idx), plain.ln_f(x))


def test_layerdrop_is_off_in_evaluation_and_after_its_share_of_the_run():
    import train_gpt2_layerdrop as script

    plain, dropping = layerdrop_pair(0.9)
    idx = torch.randint(0, 50257, (2, 32))
    dropping.eval(), plain.eval()
    torch.testing.assert_close(dropping(idx), plain(idx))
    cfg = script.Hyperparameters(max_steps=100, layerdrop=0.1, layerdrop_until=0.75)
    assert script.layerdrop_active(74, cfg) and not script.layerdrop_active(75, cfg)
    assert not script.layerdrop_active(0, script.Hyperparameters(layerdrop=0.0))
    assert dropping.drop_probs == pytest.approx([0.45, 0.9])


def test_layerdrop_draws_are_reproducible_and_roughly_at_their_rates():
    _, a = layerdrop_pair(0.5)
    _, b = layerdrop_pair(0.5)
    draws = [a.dropped_blocks() for _ in range(2000)]
    assert draws[:50] == [b.dropped_blocks() for _ in range(50)]  # same seed, same draws (DDP ranks agree)
    assert sum(0 in d for d in draws) / 2000 == pytest.approx(0.25, abs=0.04)
    assert sum(1 in d for d in draws) / 2000 == pytest.approx(0.5, abs=0.04)


def test_layerdrop_compiles_blocks_and_loss_once_whatever_blocks_it_drops():
    from torch._dynamo.utils import counters

    from kit.modeling.model import compile_regions

    plain, dropping = layerdrop_pair(0.5)
    torch._dynamo.reset()
    counters.clear()
    compile_regions(dropping, backend="eager")  # the regions as --compile 1 builds them, without Inductor's codegen
    idx = torch.randint(0, 50257, (2, 32))
    patterns = [set(), {0}, {1}, {0, 1}]
    for dropped in patterns:
        dropping.dropped_blocks = lambda dropped=dropped: dropped
        dropping(idx, idx).backward()
    assert counters["stats"]["unique_graphs"] == 2  # one block graph, one loss graph: no recompiling per drop pattern
    dropping.dropping = False  # LayerDrop's end, still training: the same graphs (every block at scale 1), the plain model's loss
    ended = dropping(idx, idx)
    ended.backward()
    assert counters["stats"]["unique_graphs"] == 2
    torch.testing.assert_close(ended, plain(idx, idx))
    dropping.eval(), plain.eval()
    torch.testing.assert_close(dropping(idx, idx), plain(idx, idx))  # the compiled loss is the plain model's loss


def test_layerdrop_script_is_the_baseline_at_zero_and_drops_blocks_above(tmp_path):
    import train_gpt2_layerdrop as script

    flags = [*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "4"]
    for rate in ("0", "0.5"):
        assert main(script.RECIPE, [*flags, "--layerdrop", rate, "--out-dir", str(tmp_path / rate)]) == 0
    train, _ = baseline_losses(tmp_path, flags)
    assert losses(tmp_path / "0") == pytest.approx(train, rel=1e-6)
    assert losses(tmp_path / "0.5") != pytest.approx(train, rel=1e-4)  # blocks skipped in the forward pass, from the first step


# ----- mixture of experts -----

def moe_reference(layer, flat):
    """Token by token: the sum over its top-k experts of gate x expert(x), skipping assignments
    beyond an expert's capacity (taken in routing order)."""
    gates, experts, _ = layer.route(flat)
    capacity = layer.capacity(experts.numel(), torch.bincount(experts.reshape(-1), minlength=layer.n_experts))
    taken = [0] * layer.n_experts
    kept = torch.zeros_like(experts, dtype=torch.bool)
    for e in range(layer.n_experts):  # routing order within an expert: token-major, then choice
        for a in (experts.reshape(-1) == e).nonzero().flatten().tolist():
            if taken[e] < capacity:
                kept.view(-1)[a] = True
                taken[e] += 1
    out = torch.zeros_like(flat)
    for t in range(len(flat)):
        for j in range(layer.top_k):
            if kept[t, j]:
                e = experts[t, j]
                hidden = torch.nn.functional.gelu(flat[t] @ layer.w_in[e] + layer.b_in[e], approximate="tanh")
                out[t] += gates[t, j] * (hidden @ layer.w_out[e] + layer.b_out[e])
    return out, kept


@pytest.mark.parametrize("top_k, capacity_factor", [(1, 0.0), (2, 0.0), (1, 0.6), (2, 0.8)])
def test_moe_equals_a_per_token_reference(top_k, capacity_factor):
    from train_gpt2_moe import MoEMLP

    torch.manual_seed(0)
    layer = MoEMLP(16, 4, top_k, capacity_factor, hidden=24, std=0.3, out_std=0.3)
    x = torch.randn(3, 10, 16)
    expected, kept = moe_reference(layer, x.reshape(-1, 16))
    torch.testing.assert_close(layer(x).reshape(-1, 16), expected, atol=1e-5, rtol=1e-4)
    assert int(layer.dropped) == int((~kept).sum()) and int(layer.routed) == 30 * top_k
    if capacity_factor:
        assert int(layer.dropped) > 0  # the small capacities above do drop some assignments
    _, experts, _ = layer.route(x.reshape(-1, 16))
    torch.testing.assert_close(layer.load, torch.bincount(experts.reshape(-1), minlength=4).float())


@pytest.mark.parametrize("top_k", [1, 2])
def test_moe_grouped_kernel_equals_the_reference_and_the_padded_kernel(top_k):
    from train_gpt2_moe import MoEMLP, grouped_mm_support

    if grouped_mm_support("cpu", torch.float32):
        pytest.skip(grouped_mm_support("cpu", torch.float32))
    torch.manual_seed(0)
    grouped = MoEMLP(16, 4, top_k, 0.0, hidden=24, std=0.3, out_std=0.3, kernel="grouped")
    padded = MoEMLP(16, 4, top_k, 0.0, hidden=24, std=0.3, out_std=0.3)
    padded.load_state_dict(grouped.state_dict())
    x = torch.randn(3, 10, 16)
    expected, _ = moe_reference(grouped, x.reshape(-1, 16))
    out = grouped(x)
    torch.testing.assert_close(out.reshape(-1, 16), expected, atol=1e-5, rtol=1e-4)
    assert int(grouped.dropped) == 0 and int(grouped.routed) == 30 * top_k
    out.pow(2).sum().backward()
    padded(x).pow(2).sum().backward()
    for name, param in grouped.named_parameters():  # the same gradients as the padded kernel, router included
        torch.testing.assert_close(param.grad, dict(padded.named_parameters())[name].grad, atol=1e-5, rtol=1e-4)
    with pytest.raises(ValueError, match="dropless"):
        MoEMLP(16, 4, 1, 1.25, kernel="grouped")


def test_grouped_kernel_compiles_in_bf16_without_graph_breaks():
    from train_gpt2_moe import MoEMLP, grouped_mm_support

    if grouped_mm_support("cpu", torch.bfloat16, compiled=True):
        pytest.skip(grouped_mm_support("cpu", torch.bfloat16, compiled=True))
    assert "bf16 only" in grouped_mm_support("cpu", torch.float32, compiled=True)
    torch.manual_seed(0)
    layer = MoEMLP(16, 4, 1, 0.0, hidden=32, kernel="grouped").to(torch.bfloat16)
    x = torch.randn(2, 8, 16, dtype=torch.bfloat16)
    compiled = torch.compile(layer, backend="eager", fullgraph=True)  # dynamo's tracing and shape checks; fails on a graph break
    torch.testing.assert_close(compiled(x), layer(x))


def test_grouped_mm_support_says_why_not_where_the_op_is_missing(monkeypatch):
    from train_gpt2_moe import grouped_mm_support

    monkeypatch.delattr(torch, "_grouped_mm", raising=False)
    assert "has no torch._grouped_mm" in grouped_mm_support("cpu", torch.float32)


def test_moe_script_picks_its_expert_kernel_and_falls_back_saying_why(monkeypatch, capsys, tmp_path):
    import train_gpt2_moe as script

    cfg = script.Hyperparameters(device="cpu", expert_kernel="grouped", capacity_factor=0.0)
    real_support = script.grouped_mm_support
    monkeypatch.setattr(script, "grouped_mm_support", lambda device, dtype, compiled: "torch._grouped_mm failed on cpu in torch.float32: no kernel")
    assert script.expert_kernel(cfg) == "padded"
    assert "expert kernel: padded (dropless), since torch._grouped_mm failed" in capsys.readouterr().out
    monkeypatch.setattr(script, "grouped_mm_support", lambda device, dtype, compiled: "")
    assert script.expert_kernel(cfg) == "grouped" and "grouped matmul" in capsys.readouterr().out
    assert script.expert_kernel(script.Hyperparameters()) == "padded"
    monkeypatch.setattr(script, "grouped_mm_support", real_support)  # not undo(): that would undo the data-dir isolation too
    flags = [*FAST, "--data", "synthetic", "--max-steps", "2", "--val-every", "2", "--experts", "2", "--capacity-factor", "0"]
    assert main(script.RECIPE, [*flags, "--expert-kernel", "grouped", "--out-dir", str(tmp_path)]) == 0  # trains with whichever kernel runs here
    assert "expert kernel: " in capsys.readouterr().out
    with pytest.raises(script.UserError, match="capacity-factor 0"):
        script.expert_kernel(script.Hyperparameters(expert_kernel="grouped"))


def test_moe_balance_loss_formula():
    from train_gpt2_moe import MoEMLP

    layer = MoEMLP(8, 4)
    counts, probs = torch.tensor([6, 2, 0, 0]), torch.tensor([[0.7, 0.1, 0.1, 0.1], [0.5, 0.3, 0.1, 0.1]])
    expected = 4 * (0.75 * 0.6 + 0.25 * 0.2 + 0 * 0.1 + 0 * 0.1)
    assert layer.balance_loss(counts, probs).item() == pytest.approx(expected)
    uniform = layer.balance_loss(torch.tensor([2, 2, 2, 2]), torch.full((3, 4), 0.25))
    assert uniform.item() == pytest.approx(1.0)


def test_moe_model_trains_its_router_through_a_compiled_graph():
    import train_gpt2_moe as script

    model = script.MoEGPT(gpt_config("tiny", block_size=32), script.Hyperparameters(experts=4, balance_weight=0.01))
    compiled = torch.compile(model, backend="eager")  # dynamo's tracing (side effects included), no code generation
    idx = torch.randint(0, 50257, (2, 32))
    compiled(idx, idx).backward()
    layers = model.moe_layers()
    assert len(layers) == 2 and all(layer.aux_loss is None for layer in layers)  # taken by the loss: no layer holds the graph
    assert all(layer.router.weight.grad.abs().sum() > 0 for layer in layers)
    model.eval()
    plain = GPT.loss(model, model.hidden(idx), idx)
    assert model(idx, idx).item() == pytest.approx(plain.item())  # validation: no balance term


def test_a_moe_forward_stopped_midway_leaves_no_activations_held_once_the_next_forward_starts(monkeypatch):
    """The micro-batch probe's out-of-memory case: a forward that stops after the first MoE layer leaves that layer's
    balance loss (and the graph behind it) on the layer; the next forward drops it first, else each failed probe
    holds the last one's activations and the probe falls to micro-batch 1 (seen on a 22.5 GiB cap)."""
    import gc
    import weakref

    import train_gpt2_moe as script

    model = script.MoEGPT(gpt_config("tiny", block_size=32), script.Hyperparameters(experts=2, balance_weight=0.01))
    first, second = model.moe_layers()[:2]
    idx = torch.randint(0, 50257, (2, 32))
    with monkeypatch.context() as patch:
        patch.setattr(second, "route", lambda *a: (_ for _ in ()).throw(torch.OutOfMemoryError("probe")))
        with pytest.raises(torch.OutOfMemoryError):
            model(idx, idx)
    assert first.aux_loss is not None and first.aux_loss.grad_fn is not None
    held = weakref.ref(first.aux_loss)
    model(idx, idx).backward()
    gc.collect()
    assert held() is None and all(layer.aux_loss is None for layer in model.moe_layers())


def test_moe_script_reports_routing(tmp_path, capsys):
    import train_gpt2_moe as script

    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "2", "--experts", "2",
                                "--out-dir", str(tmp_path)]) == 0
    assert "routing at step 2: moe0: load" in capsys.readouterr().out

    report = json.loads((tmp_path / "summary.json").read_text())["run_report"]  # the whole run's loads and drops, kept
    layers = gpt_config("tiny", block_size=32).n_layer
    assert len(report["moe_load"]) == len(report["moe_dropped_share"]) == layers
    assert all(sum(share) == pytest.approx(1.0, abs=1e-3) and len(share) == 2 for share in report["moe_load"])
    assert all(0 <= d <= 1 for d in report["moe_dropped_share"])
    assert "end of run: {\"moe_load\"" in (tmp_path / "log.txt").read_text()


# ----- multi-token prediction on the baseline -----

def mtp_model(style, offsets=2):
    import train_gpt2_mtp as script

    torch.manual_seed(0)
    model = script.MTPGPT(gpt_config("tiny", block_size=32), offsets, style)
    with torch.no_grad():  # non-zero adapters, so every offset's path matters
        for p in model.offsets.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


@pytest.mark.parametrize("style", ["parallel", "sequential"])
def test_mtp_loss_is_the_hand_computed_weighted_sum(style):
    import torch.nn.functional as F

    model = mtp_model(style)
    model.mtp_weights.copy_(torch.tensor([0.3, 0.2]))
    idx = torch.randint(0, 50257, (2, 32))
    targets = torch.roll(idx, -1, 1)
    h = model.hidden(idx)
    expected = F.cross_entropy(model.lm_head(h).reshape(-1, 50257), targets.reshape(-1))
    state = h
    for k, weight in ((1, 0.3), (2, 0.2)):
        if style == "sequential":
            state = model.offsets[k - 1](state[:, : 32 - k], model.wte(idx[:, k:]))
        else:
            state = model.offsets[k - 1](h[:, : 32 - k])
        for t in range(32 - k):  # position t predicts token t+1+k, which is targets[:, t+k]
            expected = expected + weight * F.cross_entropy(model.lm_head(state[:, t]), targets[:, t + k]) / (32 - k)
    torch.testing.assert_close(model(idx, targets), expected, atol=1e-4, rtol=1e-5)
    model.eval()
    torch.testing.assert_close(model(idx, targets), F.cross_entropy(model.lm_head(h).reshape(-1, 50257), targets.reshape(-1)))


def test_sequential_mtp_sees_no_token_beyond_the_one_before_its_target():
    model = mtp_model("sequential")
    idx = torch.randint(0, 50257, (1, 32))
    t, k = 10, 2  # depth 2 at position 10 predicts token 13 and may see tokens up to 12
    changed = idx.clone()
    changed[0, t + k + 1:] = torch.randint(0, 50257, (32 - t - k - 1,))
    with torch.no_grad():
        a = model.offset_states(model.hidden(idx), idx)[k - 1][0, : t + 1]
        b = model.offset_states(model.hidden(changed), changed)[k - 1][0, : t + 1]
    torch.testing.assert_close(a, b)
    changed[0, t + k] = (idx[0, t + k] + 1) % 50257  # token 12 itself is an input of depth 2 at position 10
    with torch.no_grad():
        c = model.offset_states(model.hidden(changed), changed)[k - 1][0, t]
    assert not torch.allclose(a[t], c)


def test_mtp_weights_anneal_the_furthest_offset_first():
    import train_gpt2_mtp as script

    cfg = script.Hyperparameters(max_steps=100, mtp_offsets=2, mtp_weight=0.3, mtp_frac=0.5)
    assert script.offset_weight(0, 1, cfg) == pytest.approx(0.3) and script.offset_weight(0, 2, cfg) == pytest.approx(0.3)
    assert script.offset_weight(25, 2, cfg) == 0 and script.offset_weight(25, 1, cfg) == pytest.approx(0.15)
    assert script.offset_weight(50, 1, cfg) == 0
    model = mtp_model("parallel")
    script.before_step(30, model, [], cfg)
    assert model.active_offsets == 1 and model.mtp_weights[1] == 0


def test_mtp_warm_up_trains_every_offset_count_once_and_changes_no_step(tmp_path, monkeypatch):
    import dataclasses

    import train_gpt2_mtp as script

    seen = []
    original = script.MTPGPT.offset_states
    monkeypatch.setattr(script.MTPGPT, "offset_states", lambda self, h, idx: seen.append(self.active_offsets) or original(self, h, idx))
    flags = [*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "0"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path / "a")]) == 0
    assert seen[:3] == [2, 1, 0] and seen[3:] == [2, 1, 0, 0]  # warm-up: K..0 (each compiles there); steps as annealed
    assert main(dataclasses.replace(script.RECIPE, warm_up_states=None), [*flags, "--out-dir", str(tmp_path / "b")]) == 0
    losses = [[e["loss"] for e in map(json.loads, (tmp_path / run / "metrics.jsonl").read_text().splitlines()) if e["type"] == "train"]
              for run in "ab"]
    assert losses[0] == losses[1] and len(losses[0]) == 4


@pytest.mark.parametrize("style", ["parallel", "sequential"])
def test_mtp_script_trains_with_its_extra_terms_and_validates_the_next_token_only(tmp_path, style):
    """At the start every head's loss is about ln(vocabulary): the first step's training loss is the next
    token's plus 0.3 for each of the 2 extra offsets (1.6 x ln V); validation, the next token's alone."""
    import math

    import train_gpt2_mtp as script

    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "4", "--mtp-style", style,
                                "--out-dir", str(tmp_path)]) == 0
    assert losses(tmp_path)[0] == pytest.approx(1.6 * math.log(50257), rel=0.02)
    assert losses(tmp_path, "val")[0] == pytest.approx(math.log(50257), rel=0.02)


# ----- R-Drop / token dropout -----

def test_symmetric_kl_is_zero_for_identical_passes_and_matches_its_formula():
    import train_gpt2_rdrop as script

    a, b = torch.randn(3, 5, 11), torch.randn(3, 5, 11)
    assert script.symmetric_kl(a, a).item() == pytest.approx(0.0, abs=1e-7)
    p, q = a.softmax(-1), b.softmax(-1)
    by_hand = 0.5 * ((p * (p / q).log()).sum(-1) + (q * (q / p).log()).sum(-1)).mean()
    assert script.symmetric_kl(a, b).item() == pytest.approx(by_hand.item(), rel=1e-5)


def test_rdrop_without_dropout_is_the_plain_loss_and_with_it_adds_a_positive_term():
    import train_gpt2_rdrop as script

    plain = tiny_gpt()
    idx = torch.randint(0, 50257, (2, 32))
    targets = torch.roll(idx, -1, 1)
    model = script.RDropGPT(gpt_config("tiny", block_size=32), token_drop=0.0, alpha=1.0)
    model.load_state_dict(plain.state_dict())
    torch.testing.assert_close(model(idx, targets), plain(idx, targets), atol=1e-5, rtol=1e-5)
    model.token_drop = 0.5
    torch.manual_seed(3)
    dropped_loss = model(idx, targets)
    torch.manual_seed(3)  # the same drawn mask: the two pieces by hand
    keep = (torch.rand(idx.shape) >= 0.5).float()
    logits_clean = plain.lm_head(plain.hidden(idx)).float()
    x = plain.wte(idx) * keep[..., None] + plain.wpe(torch.arange(idx.size(1)))  # token embeddings dropped, positions kept
    for block in plain.h:
        x = block(x)
    logits_drop = plain.lm_head(plain.ln_f(x)).float()
    ce = lambda lg: torch.nn.functional.cross_entropy(lg.reshape(-1, 50257), targets.reshape(-1))  # noqa: E731
    expected = (ce(logits_clean) + ce(logits_drop)) / 2 + script.symmetric_kl(logits_clean, logits_drop)
    torch.testing.assert_close(dropped_loss, expected, atol=1e-4, rtol=1e-5)
    assert script.symmetric_kl(logits_clean, logits_drop) > 0
    model.eval()
    torch.testing.assert_close(model(idx, targets), plain(idx, targets), atol=1e-5, rtol=1e-5)


def test_rdrop_script_is_the_baseline_without_its_terms_and_differs_with_them(tmp_path):
    """With no token dropout and no KL weight both passes are the baseline's; with them the training loss
    adds the KL term (never negative) and the path differs."""
    import train_gpt2_rdrop as script

    flags = [*FAST, "--data", "synthetic", "--max-steps", "3", "--val-every", "3"]
    assert main(script.RECIPE, [*flags, "--token-drop", "0", "--rdrop-alpha", "0", "--out-dir", str(tmp_path / "off")]) == 0
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path / "on")]) == 0
    train, val = baseline_losses(tmp_path, flags)
    assert losses(tmp_path / "off") == pytest.approx(train, rel=1e-5) and losses(tmp_path / "off", "val") == pytest.approx(val, rel=1e-5)
    assert losses(tmp_path / "on")[1:] != pytest.approx(train[1:], rel=1e-4)


# ----- curriculum + one-cycle -----

def test_curriculum_stages_and_one_cycle_at_their_boundaries():
    import train_gpt2_curriculum as script

    cfg = script.Hyperparameters(max_steps=300, seq_len=1024, curriculum_start=256, curriculum_until=0.3, cycle_up=0.25)
    lengths = [script.stage_length(s, cfg) for s in (0, 29, 30, 59, 60, 89, 90, 299)]
    assert lengths == [256, 256, 512, 512, 1024, 1024, 1024, 1024]  # 3 equal stages over the first 90 steps
    assert script.one_cycle(0, cfg) == pytest.approx(1 / 25)
    assert script.one_cycle(75, cfg) == pytest.approx(1.0)
    assert script.one_cycle(300, cfg) == pytest.approx(1 / 250_000)
    assert max(script.one_cycle(s, cfg) for s in range(301)) == pytest.approx(1.0)
    off = script.Hyperparameters(max_steps=300, one_cycle=False)
    assert script.one_cycle(10, off) == pytest.approx(warmup_cosine(10, off))
    model = script.CurriculumGPT(gpt_config("tiny", block_size=1024))
    warmed = []
    for enter_stage in script.stage_lengths(model, cfg):  # the warm-up compiles every stage's length
        enter_stage()
        warmed.append(model.train_len)
    assert warmed == [256, 512, 1024]


def test_curriculum_trains_on_the_same_tokens_in_shorter_pieces():
    import train_gpt2_curriculum as script

    plain = tiny_gpt()
    model = script.CurriculumGPT(gpt_config("tiny", block_size=32))
    model.load_state_dict(plain.state_dict())
    idx = torch.randint(0, 50257, (2, 32))
    targets = torch.roll(idx, -1, 1)
    model.train_len = 8
    torch.testing.assert_close(model(idx, targets), plain(idx.reshape(8, 8), targets.reshape(8, 8)))
    model.eval()  # evaluation always sees whole sequences
    torch.testing.assert_close(model(idx, targets), plain(idx, targets))


def test_curriculum_script_smoke(tmp_path, capsys):
    import train_gpt2_curriculum as script

    flags = [*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "4", "--curriculum-start", "8", "--curriculum-until", "0.5"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path)]) == 0
    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--curriculum-start", "12", "--out-dir", str(tmp_path / "bad")]) == 2


# ----- long context with document masks -----

def long_context_model(window_blocks=0):
    import train_gpt2_long_context as script

    torch.manual_seed(0)
    return script.LongContextGPT(gpt_config("tiny"), "dense", window_blocks, max_position=256)


def test_document_positions_restart_at_each_document():
    import train_gpt2_long_context as script

    idx = torch.tensor([[7, 8, 50256, 5, 6, 50256, 50256, 9]])
    assert script.document_positions(idx).tolist() == [[0, 1, 0, 1, 2, 0, 0, 1]]


def test_long_context_attention_is_causal_and_stays_within_documents():
    from kit.modeling.modern import EOT

    model = long_context_model()
    idx = torch.randint(0, 50000, (1, 512))
    idx[0, [0, 200, 300]] = EOT  # documents [0, 200), [200, 300), [300, 512)
    t = 250
    changed = idx.clone()
    changed[0, t + 1:] = torch.randint(0, 50000, (511 - t,))
    changed[0, 400] = EOT
    with torch.no_grad():
        a, b = model(idx), model(changed)
    torch.testing.assert_close(a[0, : t + 1], b[0, : t + 1], atol=1e-5, rtol=1e-5)  # nothing after t reaches t
    other_doc = idx.clone()
    other_doc[0, 1:200] = torch.randint(0, 50000, (199,))  # rewrite the first document
    with torch.no_grad():
        c = model(other_doc)
    torch.testing.assert_close(a[0, 200:], c[0, 200:], atol=1e-5, rtol=1e-5)  # later documents never saw it
    assert not torch.allclose(a[0, 1:200], c[0, 1:200])


def test_long_context_window_limits_the_reach():
    model = long_context_model(window_blocks=1)  # one block of 128: block 2 cannot see block 0, even two layers deep
    idx = torch.randint(0, 50000, (1, 384))
    changed = idx.clone()
    changed[0, 1:128] = torch.randint(0, 50000, (127,))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0, 256:], model(changed)[0, 256:], atol=1e-5, rtol=1e-5)


def test_long_context_script_smoke(tmp_path, capsys):
    import train_gpt2_long_context as script

    flags = ["--model-size", "tiny", "--device", "cpu", "--seq-len", "256", "--batch-tokens", "512", "--val-tokens", "512",
             "--export", "0", "--progress", "lines", "--data", "synthetic", "--max-steps", "3", "--val-every", "3"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path)]) == 0
    assert "attention: dense" in (tmp_path / "log.txt").read_text()
    assert main(script.RECIPE, [*flags, "--window", "100", "--out-dir", str(tmp_path / "bad")]) == 2


def load_moe_routing():
    from conftest import load_module

    return load_module("scripts/moe_routing.py", "moe_routing")


def test_moe_routing_guesses_each_documents_source_from_its_text():
    routing = load_moe_routing()
    assert routing.guess_source("Carbide\n\nIn chemistry, a carbide is a compound of carbon.") == "wiki"
    assert routing.guess_source("\nPope Benedict XIV\n\nPope Benedict XIV (31 March 1675 - 3 May 1758) was pope.") == "wiki"
    assert routing.guess_source("A genuine bad movie. I have never been so disappointed by a film.") == "review"
    assert routing.guess_source("Went out today.\n\nIt rained, and I saw one movie.") == "other"  # the first line is a sentence
    enc = gpt2_encoding()
    documents = ["Carbide\n\nA compound of carbon.", "Bad movie, worse film.", "My day was long."]
    stream = np.array([t for d in documents for t in [50256, *enc.encode(d)]], dtype=np.uint16)
    labels = routing.token_sources(stream, enc.decode)
    lengths = [1 + len(enc.encode(d)) for d in documents]
    assert labels.tolist() == [0] * lengths[0] + [1] * lengths[1] + [2] * lengths[2]  # each document's end-of-text token is its own
    assert routing.source_documents(stream, labels) == {"wiki": 1, "review": 1, "other": 1}


def test_moe_routing_splits_the_shares_by_source():
    """A router that sends token ids >= 100 to expert 1: a source whose documents use only such tokens
    has all its share on expert 1, wherever its documents fall in the batches."""
    routing = load_moe_routing()

    class Router(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.one_hot((x >= 100).long(), 2).float()

    class Model:
        layer = SimpleNamespace(n_experts=2, router=Router())

        def moe_layers(self):
            return [self.layer]

        def hidden(self, x):
            self.layer.router(x)

    stream = torch.cat([torch.tensor([50256]), torch.randint(100, 1000, (40,)), torch.tensor([50256]), torch.randint(1, 100, (22,))])
    labels = np.array([0] * 41 + [2] * 23)  # document 1 "wiki", document 2 "other" (its end-of-text token 50256 goes to expert 1)
    batches = [(stream[:32].view(2, 16), None), (stream[32:].view(2, 16), None)]  # the stream in order, cut mid-document
    stats = routing.routing_stats(Model(), batches, "cpu", min_doc_tokens=8, sources=labels)
    assert stats["share_by_source"]["wiki"] == [[0.0, 1.0]]
    assert stats["share_by_source"]["other"] == [pytest.approx([22 / 23, 1 / 23])] and stats["share_by_source"]["review"] == [None]
    assert stats["tokens_by_source"] == {"wiki": 41, "review": 0, "other": 23}


def test_moe_routing_report_on_a_trained_run(tmp_path):
    import train_gpt2_moe as script

    flags = [*FAST, "--data", "synthetic", "--max-steps", "2", "--val-every", "2", "--experts", "2", "--export", "1"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path)]) == 0
    routing = load_moe_routing()
    printed = routing.main([str(tmp_path), "--tokens", "2048", "--device", "cpu"])
    stats = json.loads((tmp_path / "moe_routing.json").read_text())["val"]
    assert len(stats["share"]) == 2 and all(sum(s) == pytest.approx(1.0) for s in stats["share"])
    assert "val moe0: shares" in printed

    from kit.tools.runs import load_model  # a router that always picks expert 0: shares 1/0, every document concentrated

    model = load_model(tmp_path)[0]
    for layer in model.moe_layers():
        torch.nn.init.zeros_(layer.router.weight)
    batches = [(torch.randint(0, 50000, (4, 32)), None)]
    forced = routing.routing_stats(model, batches, "cpu", min_doc_tokens=16)
    assert forced["share"][0] == [1.0, 0.0] and forced["doc_concentration"][0] == 1.0

    # chance: routing that ignores the document; one expert takes all, or two split a long document ~evenly
    one_document = [(torch.randint(0, 50000, (2, 4096)), None)]
    assert routing.chance_concentration(one_document, [[1.0, 0.0]]) == [1.0]
    assert 0.5 < routing.chance_concentration(one_document, [[0.5, 0.5]])[0] < 0.52
    short = [(torch.randint(0, 50000, (64, 64)), None)]  # 64-token documents: the larger half is well above 1/2 by chance
    assert 0.53 < routing.chance_concentration(short, [[0.5, 0.5]])[0] < 0.57
    again = routing.main([str(tmp_path), "--tokens", "2048", "--chance-only"])  # from the saved json and the data alone
    assert json.loads((tmp_path / "moe_routing.json").read_text())["val"]["chance_doc_concentration"] is not None
    assert again.splitlines()[0] == printed.splitlines()[0]
