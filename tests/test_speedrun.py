"""The speedrun recipe: Muon, document/window attention masks, schedules, and a smoke run."""

import json
import math
import warnings

import pytest
import torch

from conftest import read_metrics
from kit.modeling.modern import (BLOCK, EOT, MAX_WINDOW_BLOCKS, MODERN_SIZES, ModernConfig, ModernGPT, dense_mask, document_ids,
                        flex_block_mask)
from kit.modeling.muon import Muon, newton_schulz

warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")


@pytest.mark.parametrize("shape", [(256, 1024), (1024, 256), (64, 200)])
def test_newton_schulz_gives_singular_values_near_one(shape):
    G = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    X = newton_schulz(G).float()
    s = torch.linalg.svdvals(X)
    assert s.min() > 0.6 and s.max() < 1.25  # the quintic's band around 1, not exactly 1
    U, _, Vh = torch.linalg.svd(G, full_matrices=False)
    orthogonal = U @ Vh
    assert (X * orthogonal).sum() / (X.norm() * orthogonal.norm()) > 0.97  # it points along U V^T
    assert X.shape == G.shape


def test_polar_express_coefficients_orthogonalise_more_tightly():
    G = torch.randn(3072, 768, generator=torch.Generator().manual_seed(4))
    quintic, polar = (torch.linalg.svdvals(newton_schulz(G, coefficients=c).float()) for c in ("quintic", "polar"))
    assert 0.8 < polar.min() and polar.max() < 1.2 and quintic.min() < 0.75
    assert (polar - 1).abs().mean() < (quintic - 1).abs().mean()
    with pytest.raises(ValueError, match="quintic or polar"):
        Muon([torch.nn.Parameter(torch.zeros(4, 4))], coefficients="cubic")


def test_newton_schulz_on_a_square_matrix_lifts_most_singular_values():
    s = torch.linalg.svdvals(newton_schulz(torch.randn(512, 512, generator=torch.Generator().manual_seed(2))).float())
    inside = ((s > 0.6) & (s < 1.25)).float().mean()
    assert inside > 0.9  # only the smallest few of a square Gaussian matrix stay below the band


def test_muon_step_is_the_scaled_orthogonalised_momentum():
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(96, 32))
    g = torch.randn(96, 32)
    p.grad = g.clone()
    before = p.detach().clone()
    Muon([p], lr=0.1, momentum=0.9, nesterov=True).step()
    # first step: buffer = 0.1 g; nesterov direction = g + 0.9 (0.1 g - g) = 0.19 g, same direction as g
    expected = before - 0.1 * (96 / 32) ** 0.5 * newton_schulz(0.19 * g)
    torch.testing.assert_close(p.detach(), expected, atol=2e-2, rtol=0)
    with pytest.raises(ValueError, match="2-D parameters only"):
        Muon([torch.nn.Parameter(torch.zeros(3))])


def test_muon_without_tall_scale_steps_lr_for_every_shape():
    torch.manual_seed(0)
    tall, wide = torch.nn.Parameter(torch.randn(96, 32)), torch.nn.Parameter(torch.randn(32, 96))
    for p in (tall, wide):
        p.grad = torch.randn_like(p)
    before = [p.detach().clone() for p in (tall, wide)]
    directions = [0.19 * p.grad for p in (tall, wide)]  # the first Nesterov step, as above
    Muon([tall, wide], lr=0.1, momentum=0.9, tall_scale=False).step()
    for p, b, d in zip((tall, wide), before, directions):
        torch.testing.assert_close(p.detach(), b - 0.1 * newton_schulz(d), atol=2e-2, rtol=0)


def test_normuon_equalises_the_rows_of_the_update_and_keeps_its_norm():
    """row_beta > 0: each output row of the orthogonalised update divided by its running RMS, the
    matrix's (each split matrix's) Frobenius norm kept. A tall matrix's orthogonalised rows differ
    in length, so the test can tell."""
    torch.manual_seed(0)
    p = torch.nn.Parameter(torch.randn(96, 32))
    p.grad = torch.randn(96, 32)
    orthogonalised = newton_schulz(0.19 * p.grad, dtype=torch.float32)  # the first Nesterov step, as above
    row_norms = orthogonalised.norm(dim=1)
    assert row_norms.max() > 1.5 * row_norms.min()
    before = p.detach().clone()
    opt = Muon([p], lr=0.1, momentum=0.9, tall_scale=False, row_beta=0.95)
    opt.step()
    update = (before - p.detach()) / 0.1
    torch.testing.assert_close(update.norm(dim=1), torch.full((96,), orthogonalised.norm().item() / 96 ** 0.5), rtol=1e-4, atol=0)
    torch.testing.assert_close(opt.state[p]["row_second_moment"].view(96), 0.05 * orthogonalised.square().mean(dim=1), rtol=1e-4, atol=0)

    fused = torch.nn.Parameter(torch.cat([torch.randn(16, 32), 5 * torch.randn(16, 32), torch.randn(16, 32)]))
    fused.grad = torch.cat([torch.randn(16, 32), 3 * torch.randn(16, 32), torch.randn(16, 32)])
    pieces = [newton_schulz(0.19 * g, dtype=torch.float32) for g in fused.grad.view(3, 16, 32)]
    before = fused.detach().clone()
    Muon([fused], lr=0.1, momentum=0.9, split=3, tall_scale=False, row_beta=0.95).step()
    for piece, applied in zip(pieces, ((before - fused.detach()) / 0.1).view(3, 16, 32)):
        torch.testing.assert_close(applied.norm(), piece.norm(), rtol=1e-4, atol=0)
    with pytest.raises(ValueError, match="row_beta"):
        Muon([torch.nn.Parameter(torch.zeros(4, 4))], row_beta=1.0)


def test_muon_split_treats_stacked_matrices_as_separate_parameters():
    """split=3 (a fused QKV weight) steps each third as its own matrix; same-shape matrices batched
    in one optimizer step as they would one by one."""
    torch.manual_seed(0)
    before, grad = torch.randn(3 * 16, 32), torch.randn(3 * 16, 32)

    def parameters(count):
        params = [torch.nn.Parameter(w.clone()) for w in before.chunk(count)]
        for param, g in zip(params, grad.chunk(count)):
            param.grad = g.clone()
        return params

    fused = parameters(1)
    Muon(fused, lr=0.1, momentum=0.9, split=3).step()
    batched = parameters(3)
    Muon(batched, lr=0.1, momentum=0.9).step()
    single = parameters(3)
    for param in single:
        Muon([param], lr=0.1, momentum=0.9).step()
    torch.testing.assert_close(fused[0].detach(), torch.cat([p.detach() for p in single]), atol=1e-6, rtol=0)
    torch.testing.assert_close(fused[0].detach(), torch.cat([p.detach() for p in batched]), atol=1e-6, rtol=0)
    whole = parameters(1)  # without the split: one 48 x 32 matrix, scaled by sqrt(48 / 32)
    Muon(whole, lr=0.1, momentum=0.9).step()
    split_update, whole_update = fused[0].detach() - before, whole[0].detach() - before
    assert (whole_update - split_update).norm() > 0.1 * split_update.norm()
    with pytest.raises(ValueError, match="split=5"):
        Muon([torch.nn.Parameter(torch.zeros(48, 32))], split=5)


def muon_matrices(shapes, seed=0):
    torch.manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]


def test_muon_batched_step_equals_one_matrix_at_a_time_with_every_part_on():
    """Matrices of one shape step as one batch (momentum, orthogonalisation, NorMuon, weight decay,
    cautious weight decay and the step on stacked tensors); over three steps every matrix ends where
    an optimizer holding only that matrix takes it, and each keeps its own state."""
    shapes = [(48, 32)] * 3 + [(32, 64)] * 2 + [(64, 32)]
    together, alone = muon_matrices(shapes), muon_matrices(shapes)
    settings = dict(lr=0.1, momentum=0.9, row_beta=0.95, cautious_wd=2.0, weight_decay=0.1)
    batched = Muon([{"params": together[:3], "split": 3}, {"params": together[3:]}], **settings)
    separate = [Muon([p], split=3 if i < 3 else 1, **settings) for i, p in enumerate(alone)]
    for step in range(3):
        for i, (a, b) in enumerate(zip(together, alone)):
            a.grad = torch.sin(torch.arange(a.numel(), dtype=torch.float32) * (i + 1) + step).view_as(a)
            b.grad = a.grad.clone()
        batched.step()
        for opt in separate:
            opt.step()
    for a, b in zip(together, alone):
        torch.testing.assert_close(a.detach(), b.detach(), atol=1e-6, rtol=1e-5)
    assert all(set(batched.state[p]) == {"momentum_buffer", "row_second_moment"} for p in together)


def test_muon_row_chunks_step_each_chunk_as_its_own_matrix():
    """split=(16, 16, 32) (Q and K by pairs of heads, V whole, in miniature): over three steps with every part on,
    each stacked matrix ends where an optimizer holding its chunks as separate matrices takes them; chunks of a
    row count keep NorMuon state of their own. Rows that do not add up, or chunks of different tall factors, are refused."""
    settings = dict(lr=0.1, momentum=0.9, row_beta=0.95, cautious_wd=2.0, weight_decay=0.1)
    stacked = muon_matrices([(64, 32)] * 2)
    pieces = [[torch.nn.Parameter(chunk.detach().clone()) for chunk in p.split([16, 16, 32])] for p in stacked]
    chunked = Muon([{"params": stacked, "split": (16, 16, 32)}], **settings)
    separate = Muon([p for chunks in pieces for p in chunks], **settings)
    for step in range(3):
        for i, (whole, chunks) in enumerate(zip(stacked, pieces)):
            whole.grad = torch.sin(torch.arange(whole.numel(), dtype=torch.float32) * (i + 1) + step).view_as(whole)
            for chunk, g in zip(chunks, whole.grad.split([16, 16, 32])):
                chunk.grad = g.clone()
        chunked.step()
        separate.step()
    for whole, chunks in zip(stacked, pieces):
        torch.testing.assert_close(whole.detach(), torch.cat([c.detach() for c in chunks]), atol=1e-6, rtol=1e-5)
    assert set(chunked.state[stacked[0]]) == {"momentum_buffer", "row_second_moment_16", "row_second_moment_32"}
    weights = [p.detach().clone() for p in stacked]
    chunked.warm_up()  # compiles (here: runs) each chunk class's orthogonalisation on zeros, touching nothing
    assert all(torch.equal(p.detach(), w) for p, w in zip(stacked, weights))
    with pytest.raises(ValueError, match="add up to 48"):
        Muon([{"params": muon_matrices([(64, 32)]), "split": (16, 32)}])
    with pytest.raises(ValueError, match="tall-matrix factor"):
        Muon([{"params": muon_matrices([(96, 32)]), "split": (32, 64)}])


def test_muon_step_launches_as_many_ops_for_eight_matrices_as_for_two():
    """The per-shape batch keeps the number of operations per step independent of the number of
    matrices (each op a kernel launch on a GPU, where launches, not FLOPs, bound this step)."""
    from torch.profiler import ProfilerActivity, profile

    VIEWS = {"aten::select", "aten::view", "aten::unbind", "aten::slice", "aten::as_strided", "aten::alias"}

    def ops_per_step(count):
        params = muon_matrices([(32, 48)] * count)
        opt = Muon(params, lr=0.1, row_beta=0.95, cautious_wd=1.0)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()  # state created
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            opt.step()
        top_level = [e.name for e in prof.events() if e.name.startswith("aten::") and not (e.cpu_parent and e.cpu_parent.name.startswith("aten::"))]
        return sum(1 for name in top_level if name not in VIEWS)  # views launch nothing


    assert ops_per_step(8) == ops_per_step(2)


def test_muon_warm_up_changes_neither_weights_nor_state():
    params = [torch.nn.Parameter(torch.randn(48, 32)), torch.nn.Parameter(torch.randn(32, 64))]
    before = [p.detach().clone() for p in params]
    opt = Muon([{"params": params[:1], "split": 3}, {"params": params[1:]}])
    opt.warm_up()
    assert all(torch.equal(p, b) for p, b in zip(params, before)) and not opt.state


SHARED_MUON_SCRIPT = """
import json, sys, torch, torch.distributed as dist
from kit.modeling.muon import Muon
out = sys.argv[1]
if len(sys.argv) > 2:  # under torchrun
    dist.init_process_group("gloo")
rank = dist.get_rank() if dist.is_initialized() else 0
torch.manual_seed(0)
params = [torch.nn.Parameter(torch.randn(48, 32)) for _ in range(3)] + [torch.nn.Parameter(torch.randn(32, 64))]
opt = Muon([{"params": params[:3], "split": 3}, {"params": params[3:]}], lr=0.1)
done = []
orthogonalise = opt.orthogonalise
opt.orthogonalise = lambda stacked, steps: done.append(stacked.size(0)) or orthogonalise(stacked, steps)
for step in range(2):
    for i, p in enumerate(params):
        p.grad = torch.sin(torch.arange(p.numel(), dtype=torch.float32) * (i + 1) + step).view_as(p)
    opt.step()
torch.save([p.detach() for p in params], f"{out}/rank{rank}.pt")
json.dump(done, open(f"{out}/rank{rank}.json", "w"))
if dist.is_initialized():  # left to exit, gloo's threads can be torn down mid-use ("terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
"""


def test_muon_under_torchrun_splits_the_orthogonalisation_and_matches_one_process(tmp_path, monkeypatch):
    """Two gloo ranks each orthogonalise half of the matrices of one shape (three 48x32: 2 and 1 padded)
    and end with the weights of one process that did them all."""
    import runpy
    import subprocess
    import sys

    from conftest import REPO, subprocess_env

    script = tmp_path / "muon_ranks.py"
    script.write_text(SHARED_MUON_SCRIPT)
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    ranks = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script), str(tmp_path / "two"), "ddp"],
                             cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    monkeypatch.setattr(sys, "argv", [str(script), str(tmp_path / "one")])
    runpy.run_path(str(script), run_name="__main__")  # the one-process run, here, while the ranks run
    _, ranks_err = ranks.communicate(timeout=300)
    assert ranks.returncode == 0, ranks_err[-3000:]
    assert json.loads((tmp_path / "one" / "rank0.json").read_text()) == [3, 1, 3, 1]  # one process: every matrix
    for rank in (0, 1):
        assert json.loads((tmp_path / "two" / f"rank{rank}.json").read_text()) == [2, 1, 2, 1]  # a rank: its share of each shape
    one = torch.load(tmp_path / "one" / "rank0.pt")
    for rank in (0, 1):
        for a, b in zip(one, torch.load(tmp_path / "two" / f"rank{rank}.pt")):
            assert torch.allclose(a, b, atol=1e-6)


def token_batch(B=2, T=4 * BLOCK, seed=0, eots=((0, 100, 300), (50, 400))):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 1000, (B, T), generator=g)
    for b, positions in enumerate(eots):
        idx[b, list(positions)] = EOT
    return idx


@pytest.mark.parametrize("window", [1, 2, 3, 4])
def test_flex_block_mask_equals_the_dense_rule(window):
    from torch.nn.attention.flex_attention import flex_attention

    idx = token_batch()
    docs, w = document_ids(idx), torch.tensor(window)
    q, k, v = (torch.randn(2, 2, idx.size(1), 32, generator=torch.Generator().manual_seed(i)) for i in range(3))
    out = flex_attention(q, k, v, block_mask=flex_block_mask(docs, w), scale=0.12)
    ref = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=dense_mask(docs, w), scale=0.12)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def listed(num, indices):
    """The (batch, q block, kv block) triples a BlockMask lists."""
    return {(b, qb, int(indices[b, 0, qb, i])) for b in range(num.size(0)) for qb in range(num.size(2)) for i in range(int(num[b, 0, qb]))}


@pytest.mark.parametrize("window", [1, 2, 4])
def test_block_mask_structure(window):
    """Full blocks are entirely allowed, partial ones partly, unlisted ones not at all."""
    idx = token_batch(eots=((0, 130, 131, 300), (0,)))
    docs = document_ids(idx)
    mask = flex_block_mask(docs, torch.tensor(window))
    dense = dense_mask(docs, torch.tensor(window))[:, 0]
    full, partial = listed(mask.full_kv_num_blocks, mask.full_kv_indices), listed(mask.kv_num_blocks, mask.kv_indices)
    assert not full & partial
    n = idx.size(1) // BLOCK
    for b in range(idx.size(0)):
        for qb in range(n):
            for kb in range(n):
                tile = dense[b, qb * BLOCK:(qb + 1) * BLOCK, kb * BLOCK:(kb + 1) * BLOCK]
                if (b, qb, kb) in full:
                    assert tile.all()
                elif (b, qb, kb) in partial:
                    assert tile.any()
                else:
                    assert not tile.any()
    assert (0, 1, 0) not in full | partial if window == 1 else (0, 1, 0) in partial  # the window is counted in blocks


def tiny_model(attn, seq_len=2 * BLOCK, window=2, seed=0):
    torch.manual_seed(seed)
    model = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=seq_len, attn=attn, attn_gate_dims=8, bigram_buckets=97)).eval()
    with torch.no_grad():  # the zero-initialised projections, gates and head would hide every dependency
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.set_window(window)
    return model


@pytest.mark.parametrize("attn", ["dense", "flex"])
def test_modern_model_is_causal(attn):
    model = tiny_model(attn)
    x = token_batch(T=2 * BLOCK, eots=((0, 90), (0,)))
    t = 150
    changed = x.clone()
    changed[:, t + 1:] = torch.randint(0, 1000, (2, x.size(1) - t - 1))
    changed[0, 200] = EOT  # a new document starting later changes nothing before it either
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("attn", ["dense", "flex"])
def test_documents_do_not_see_each_other(attn):
    model = tiny_model(attn)
    x = token_batch(T=2 * BLOCK, eots=((0, 90), (0,)))
    changed = x.clone()
    changed[0, 1:90] = torch.randint(0, 1000, (89,))  # rewrite the first document of sequence 0
    with torch.no_grad():
        a, b = model(x), model(changed)
    torch.testing.assert_close(a[0, 90:], b[0, 90:], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(a[0, :90], b[0, :90])


def test_window_limits_how_far_back_attention_reaches():
    """With 1-block windows, a token in block 2 cannot see block 0 (two layers reach one block further)."""
    model = tiny_model("dense", seq_len=3 * BLOCK, window=1)
    x = token_batch(T=3 * BLOCK, eots=((0,), (0,)))
    changed = x.clone()
    changed[:, 1:BLOCK] = torch.randint(0, 1000, (2, BLOCK - 1))
    with torch.no_grad():
        a, b = model(x), model(changed)
    # short windows are max(1, 1 // 2) = 1 block too: layer 1 sees block 1, which saw block 0 only if in the same block
    torch.testing.assert_close(a[:, 2 * BLOCK:], b[:, 2 * BLOCK:], atol=1e-5, rtol=1e-5)
    model.set_window(3)
    with torch.no_grad():
        assert not torch.allclose(model(x)[:, 2 * BLOCK:], model(changed)[:, 2 * BLOCK:])


def test_value_embeddings_go_to_the_first_and_last_layers():
    model = ModernGPT(ModernConfig(n_layer=12, n_head=2, head_dim=32, n_embd=64, max_seq_len=BLOCK, attn="dense"))
    idx = torch.zeros(1, 4, dtype=torch.long)
    per_layer = model.layer_value_embeds(idx)
    firsts = [model.value_embeds[i](idx) for i in range(3)]
    for layer, source in [(0, 0), (1, 1), (2, 2), (9, 0), (10, 1), (11, 2)]:
        assert torch.equal(per_layer[layer], firsts[source])
    assert all(per_layer[i] is None for i in range(3, 9))


def test_schedules_at_their_boundaries():
    import train_gpt2_speedrun as sr

    cfg = sr.Hyperparameters()
    assert sr.constant_then_cooldown(0, cfg) == 1.0
    cooldown_start = (1 - cfg.cooldown_frac) * cfg.max_steps
    assert sr.constant_then_cooldown(math.floor(cooldown_start), cfg) == 1.0
    assert sr.constant_then_cooldown(math.ceil(cooldown_start) + 1, cfg) < 1.0
    assert sr.constant_then_cooldown(cfg.max_steps, cfg) == pytest.approx(0.1)
    halfway = cfg.max_steps * (1 - cfg.cooldown_frac / 2)  # half way down from 1 to 0.1
    assert sr.constant_then_cooldown(halfway, cfg) == pytest.approx(0.55, abs=1e-3)
    assert sr.long_window_blocks(0, cfg) == 1 and sr.long_window_blocks(cfg.max_steps, cfg) == MAX_WINDOW_BLOCKS
    assert sr.muon_momentum(0, cfg) == pytest.approx(0.85) and sr.muon_momentum(300, cfg) == pytest.approx(0.95)
    assert sr.muon_momentum(cfg.max_steps, cfg) == pytest.approx(0.95)
    assert sr.validate_at(125, cfg) and not sr.validate_at(1225, cfg) and sr.validate_at(1250, cfg)  # every 25 in the last 30%
    assert sr.validate_at(1275, cfg) and not sr.validate_at(1230, cfg)


def test_ablation_switches_remove_their_component():
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config

    def built(*flags):
        cfg, _ = parse_config(sr.Hyperparameters, ["--v2", "0", "--model-size", "tiny", "--device", "cpu", *flags])
        model = sr.build_model(cfg)
        return cfg, model, sr.build_optimizers(model, cfg)

    cfg, model, opts = built()
    assert len(model.value_embeds) == 1 and model.skip_weights is not None and any(isinstance(o, Muon) for o in opts)
    cfg, model, opts = built("--muon", "0")
    assert len(opts) == 1 and not isinstance(opts[0], Muon)
    assert {id(p) for g in opts[0].param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    _, model, _ = built("--value-embeds", "0")
    assert len(model.value_embeds) == 0 and model.layer_value_embeds(torch.zeros(1, 4, dtype=torch.long)) == [None, None]
    _, model, _ = built("--fp8-head", "1")
    assert model.lm_head.fp8  # forced on; "auto" (the default) is off on the CPU
    _, model, _ = built("--unet", "0")
    assert model.skip_weights is None
    cfg, _, _ = built("--window-schedule", "0")
    assert sr.long_window_blocks(0, cfg) == MAX_WINDOW_BLOCKS


@pytest.mark.parametrize("flags", [(), ("--bigram-buckets", "101"), ("--mtp-offsets", "2"), ("--muon-split-qkv", "0"), ("--skip-attn-layers", "1", "--value-embeds", "0"),
                                   ("--skip-mlp-layers", "0", "--mlp-out-lr", "2"), ("--skip-mlp-layers", "0", "--skip-attn-layers", "0"), ("--model-size", "124m", "--seq-len", "256"),
                                   ("--model-size", "124m", "--seq-len", "256", "--bigram-buckets", "0", "--skip-pairs", "4:7", "--backout-layer", "8",
                                    "--attn-from-backout", "1", "--muon-qk-head-pairs", "1", "--yarn", "1")])
def test_every_parameter_is_optimised_exactly_once(flags):
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config

    cfg, _ = parse_config(sr.Hyperparameters, ["--v2", "0", "--model-size", "tiny", "--device", "cpu", *flags])
    model = sr.build_model(cfg)
    optimised = [id(p) for opt in sr.build_optimizers(model, cfg) for g in opt.param_groups for p in g["params"]]
    assert sorted(optimised) == sorted(id(p) for p in model.parameters())


def test_record_architecture_switches():
    """The 12-layer model drops layer 7's attention by default (auto), Q/K/V go to Muon as three
    matrices each, and half the rotary pairs do not rotate; each switch turns its part off."""
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config
    from kit.core.errors import UserError

    def built(*flags):
        cfg, _ = parse_config(sr.Hyperparameters, ["--v2", "0", "--device", "cpu", "--seq-len", "256", "--bigram-buckets", "0", *flags])  # no bigram table (193M weights): not checked here
        model = sr.build_model(cfg)
        return model, sr.build_optimizers(model, cfg)

    model, (_, muon) = built()
    assert [i for i, b in enumerate(model.blocks) if b.attn is None] == [7]
    assert [g["split"] for g in muon.param_groups] == [3, 1] and len(muon.param_groups[0]["params"]) == 11
    assert (model.blocks[0].attn.rotary.sin[:, 32:] == 0).all() and (model.blocks[0].attn.rotary.sin[1, :32] != 0).all()
    _, (_, muon) = built("--muon-qk-head-pairs", "1")
    assert muon.param_groups[0]["split"] == (256,) * 6 + (768,)  # 3 pairs of 128-dim heads in Q, 3 in K, then V
    with pytest.raises(UserError, match="--muon-qk-head-pairs"):
        built("--muon-qk-head-pairs", "1", "--muon-split-qkv", "0")
    model, (_, muon) = built("--skip-attn-layers", "none", "--muon-split-qkv", "0", "--rope", "full")
    assert all(b.attn is not None for b in model.blocks) and [g["split"] for g in muon.param_groups] == [1]
    assert (model.blocks[0].attn.rotary.sin[1] != 0).all()
    for flags in (("--skip-attn-layers", "12"), ("--skip-attn-layers", "x"),
                  ("--skip-attn-layers", "0", "--value-embed-layers", "0,1,2")):  # embedding 0 would feed layer 0 alone
        with pytest.raises(UserError):
            built(*flags)


def test_skip_mlp_layers_drops_the_mlp_and_its_flops():
    """--skip-mlp-layers 0 (the public record of 2025-09-05): layer 0 keeps only its attention; the FLOP count
    loses that MLP's two matrices, and the model computes what the full one does while that MLP's output is zero
    (its down projection starts at zero), with the same weights otherwise."""
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config
    from kit.core.errors import UserError

    def built(*flags):
        cfg, _ = parse_config(sr.Hyperparameters, ["--v2", "0", "--model-size", "tiny", "--device", "cpu", "--seq-len", "256", "--bigram-buckets", "0", *flags])
        return sr.build_model(cfg)

    torch.manual_seed(0)
    full = built()
    torch.manual_seed(0)
    dropped = built("--skip-mlp-layers", "0")
    assert dropped.blocks[0].mlp is None and all(b.mlp is not None for b in dropped.blocks[1:])
    weights = full.state_dict()  # every other weight starts as the full model's at the same seed (a paired comparison)
    assert all(torch.equal(weights[name], value) for name, value in dropped.state_dict().items())
    width = full.config.n_embd
    assert full.flops_per_token(256) - dropped.flops_per_token(256) == 6 * 2 * width * 4 * width
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.05 * torch.randn_like(p))  # every other weight non-zero, so the comparison sees each part
        full.blocks[0].mlp.down.weight.zero_()
    missing, unexpected = dropped.load_state_dict(full.state_dict(), strict=False)
    assert not missing and sorted(unexpected) == ["blocks.0.mlp.down.weight", "blocks.0.mlp.up.weight"]
    idx = torch.randint(0, full.config.vocab_size, (2, 256))
    torch.testing.assert_close(dropped(idx), full(idx))
    for flags, reason in ((("--skip-mlp-layers", "2"), "layers 0..1"), (("--skip-mlp-layers", "0", "--sublayer-scales", "1"), "sublayer scales")):
        with pytest.raises(UserError, match=reason):
            built(*flags)


def test_a_layer_without_attention_and_mlp_only_mixes_its_input():
    """--skip-mlp-layers 0 --skip-attn-layers 0,7 (the public record of 2025-09-21 on top of 2025-09-05): layer 0
    passes on its input mixed with the embedding (and the bigram embedding); value embedding 0, tied to layers 0 and 9,
    is read by layer 9 alone. The model equals the one with layer 0's attention whose output projection is zero."""
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config

    def built(*flags):
        cfg, _ = parse_config(sr.Hyperparameters, ["--model-size", "124m", "--device", "cpu", "--seq-len", "256", "--bigram-buckets", "61",
                                                   "--skip-mlp-layers", "0", *flags])
        return sr.build_model(cfg)

    torch.manual_seed(0)
    with_attention = built()
    torch.manual_seed(0)
    empty = built("--skip-attn-layers", "0,7")
    assert empty.blocks[0].attn is None and empty.blocks[0].mlp is None and empty.value_embed_slots()[0] == empty.value_embed_slots()[9] == 0
    with torch.no_grad():
        for p in with_attention.parameters():
            p.add_(0.02 * torch.randn_like(p))
        with_attention.blocks[0].attn.proj.weight.zero_()
    missing, unexpected = empty.load_state_dict(with_attention.state_dict(), strict=False)
    assert not missing and unexpected and all(name.startswith("blocks.0.attn.") for name in unexpected)
    for model in (with_attention, empty):
        model.set_window(2)
    idx = torch.randint(0, 50000, (1, 256))
    with torch.no_grad():
        torch.testing.assert_close(empty(idx), with_attention(idx))
    block, x, x0 = empty.blocks[0], torch.randn(1, 4, 768), torch.randn(1, 4, 768)
    torch.testing.assert_close(block(x, x0, None, None), block.residual_mix[0] * x + block.residual_mix[1] * x0)
    assert empty.flops_per_token(256) < with_attention.flops_per_token(256)


def test_micro_batch_rule_fits_small_cards():
    import train_gpt2_speedrun as sr

    cfg = sr.Hyperparameters()
    assert sr.micro_batch_for_memory(cfg, 24 * 2**30) == 1
    assert sr.micro_batch_for_memory(cfg, int(139.8 * 2**30)) == 6


def test_speedrun_smoke_run(tmp_path):
    import train_gpt2_speedrun as sr
    from kit.loop.train import main

    code = main(sr.RECIPE, ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--batch-tokens", "256",
                            "--val-tokens", "512", "--max-steps", "8", "--export", "0", "--out-dir", str(tmp_path)])
    assert code == 0
    train = read_metrics(tmp_path)
    assert train[-1]["loss"] < train[0]["loss"] - 1.0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["script"] == "train_gpt2_speedrun.py" and summary["steps"] == 8
    log = (tmp_path / "log.txt").read_text()
    assert "attention: dense" in log and "kernel paths: attention: dense reference" in log and "head: bf16/fp32 (no FP8)" in log


def test_speedrun_webmix_preset_and_seq_len_check(capsys):
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config
    from kit.loop.train import main

    cfg, _ = parse_config(sr.Hyperparameters, ["--data", "webmix", "--v2", "0"])
    assert cfg.max_steps == 410 and cfg.batch_tokens == 393_216
    assert [s for s in range(411) if sr.validate_at(s, cfg)][-12:] == [300, *range(378, 409, 3)]  # every 3 in the last 8% (the last step: by the trainer)
    cfg, _ = parse_config(sr.Hyperparameters, ["--data", "webmix", "--max-steps", "300"])
    assert cfg.max_steps == 300
    code = main(sr.RECIPE, ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--seq-len", "100", "--batch-tokens", "200"])
    assert code == 2 and "multiple of 128" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_flex_path_equals_dense_on_gpu_with_gradients():
    idx = token_batch().cuda()
    models = {attn: tiny_model(attn, seq_len=4 * BLOCK).cuda().train() for attn in ("dense", "flex")}
    models["flex"].load_state_dict(models["dense"].state_dict())
    y = torch.roll(idx, -1, dims=1)
    losses, grads = {}, {}
    for attn, model in models.items():
        model.set_window(2)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = model(idx, y)
        loss.backward()
        losses[attn], grads[attn] = loss.item(), model.blocks[0].attn.qkv.weight.grad.float()
    assert losses["flex"] == pytest.approx(losses["dense"], rel=1e-2)
    assert ((grads["flex"] - grads["dense"]).norm() / grads["dense"].norm()).item() < 5e-2


@pytest.mark.parametrize("mode, extra", [("whole", ("--bigram-buckets", "101", "--yarn", "1")), ("regional", ("--skip-attn-layers", "1", "--value-embed-layers", "0"))],
                         ids=["whole-bigram-yarn", "regional-with-an-mlp-only-block"])
def test_compiled_model_does_not_recompile_as_the_window_grows(tmp_path, monkeypatch, mode, extra):
    """6 steps with the window growing every step: after the warm-up (which compiles the training
    and the evaluation graphs, blocks without attention included) nothing recompiles, also while YaRN
    rewrites the rotary tables and the attention scale at each new window. Regionally:
    layer 0 attends and takes a value embedding, layer 1 is MLP only. Recompiling is Dynamo's decision
    (its guards), whatever the backend: AOTAutograd without Inductor's code generation keeps it, in seconds."""
    import torch._dynamo

    import train_gpt2_speedrun as speedrun
    from kit.loop.train import Trainer, main

    real_compile, real_warm_up = torch.compile, Trainer.warm_up

    def compile_without_inductor(model=None, *, dynamic=None, **_):
        return real_compile(model, backend="aot_eager", dynamic=dynamic)

    def warm_up_then_forbid_recompiling(self):
        seconds = real_warm_up(self)
        torch._dynamo.config.error_on_recompile = True  # (monkeypatch cannot restore a config module's entry)
        return seconds

    monkeypatch.setattr(torch, "compile", compile_without_inductor)
    monkeypatch.setattr(Trainer, "warm_up", warm_up_then_forbid_recompiling)
    torch._dynamo.reset()
    flags = ["--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--compile", "1", "--compile-mode", mode, "--max-steps", "6",
             "--batch-tokens", "256", "--val-tokens", "512", "--val-every", "3", "--export", "0", "--progress", "lines", "--out-dir", str(tmp_path), *extra]
    try:
        assert main(speedrun.RECIPE, flags) == 0
    finally:
        torch._dynamo.config.error_on_recompile = False
        torch._dynamo.reset()
    assert [e["step"] for e in read_metrics(tmp_path)] == [1, 2, 3, 4, 5, 6]
    assert len(read_metrics(tmp_path, "val")) == 3  # steps 0, 3 and 6: the evaluation graph ran between training steps


def test_ddp_two_processes_match_one_process(tmp_path, isolated_data_dir):
    """Muon and Adam under DDP: the same losses as one process with twice the accumulation, and
    the same weights up to float rounding (reduction order differs; Newton-Schulz runs in fp32 on the CPU)."""
    import subprocess
    import sys

    from safetensors.torch import load_file

    import train_gpt2_speedrun as speedrun
    from conftest import REPO, subprocess_env
    from kit.loop.train import main

    # 6 sequences: the batch stages (1/3, 2/3, all) are whole micro-batches in one process (2, 4, 6) and on two ranks (1, 2, 3 each)
    flags = ["train_gpt2_speedrun.py", "--model-size", "tiny", "--data", "synthetic", "--device", "cpu", "--batch-tokens", "768",
             "--val-tokens", "512", "--max-steps", "3", "--micro-batch", "1", "--val-every", "0", "--export", "1", "--progress", "lines"]
    env = subprocess_env(KIT_DATA_DIR=isolated_data_dir)
    ranks = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *flags, "--out-dir", str(tmp_path / "two")],
                             cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert main(speedrun.RECIPE, [*flags[1:], "--out-dir", str(tmp_path / "one")]) == 0  # the one-process reference, here, while the ranks run
    _, ranks_err = ranks.communicate(timeout=300)
    assert ranks.returncode == 0, ranks_err[-3000:]
    for a, b in zip(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-4)
    one, two = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "two" / "model.safetensors")
    for name in one:
        assert ((one[name] - two[name]).norm() / (one[name].norm() + 1e-12)).item() < 5e-3, name


def test_multi_token_loss_equals_the_hand_computed_sum():
    import torch.nn.functional as F

    from kit.modeling.modern import rms_norm

    torch.manual_seed(0)
    model = ModernGPT(ModernConfig(**MODERN_SIZES["tiny"], vocab_size=512, max_seq_len=BLOCK, attn="dense", mtp_offsets=2))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    model.mtp_weight.fill_(0.3)
    x, y = torch.randint(0, 512, (2, BLOCK)), torch.randint(0, 512, (2, BLOCK))
    captured, original_head = {}, model.head

    def recording_head(h, targets=None):  # keep the trunk's output to recompute the losses by hand
        captured["h"] = h
        return original_head(h, targets)

    model.head = recording_head
    model.train()
    total = model(x, y)
    h = captured["h"]

    def ce(logits, targets):
        return F.cross_entropy(logits.double().reshape(-1, logits.size(-1)), targets.reshape(-1))

    expected = ce(model.logits(h), y)
    for k in (1, 2):
        future = model.logits(h[:, :-k] + model.mtp_adapters[k - 1](rms_norm(h[:, :-k])))
        expected = expected + 0.3 * ce(future, y[:, k:])
    torch.testing.assert_close(total.double(), expected, atol=1e-4, rtol=1e-5)
    model.eval()
    torch.testing.assert_close(model(x, y).double(), ce(model.logits(h), y), atol=1e-4, rtol=1e-5)  # validation: next token only


def test_batch_ramp_schedule():
    import train_gpt2_speedrun as sr

    assert sr.batch_share(0, sr.Hyperparameters()) == 1.0  # off by default
    cfg = sr.Hyperparameters(batch_ramp_start=0.25, batch_ramp_frac=0.5)
    assert sr.batch_share(0, cfg) == 0.25
    assert sr.batch_share(round(0.25 * cfg.max_steps), cfg) == pytest.approx(0.625, abs=1e-3)
    assert sr.batch_share(cfg.max_steps // 2 + 1, cfg) == 1.0


def test_mtp_weight_schedule():
    import train_gpt2_speedrun as sr

    cfg = sr.Hyperparameters(mtp_offsets=1)
    assert sr.mtp_weight(0, cfg) == pytest.approx(0.3)
    assert sr.mtp_weight(cfg.max_steps // 4, cfg) == pytest.approx(0.15, abs=1e-3)
    assert sr.mtp_weight(cfg.max_steps // 2 + 1, cfg) == 0.0


def test_attention_gate_starts_at_one_half_and_reads_the_leading_dimensions():
    from kit.modeling.modern import ModernAttention

    torch.manual_seed(0)
    cfg = ModernConfig(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense", attn_gate_dims=8)
    attn = ModernAttention(cfg)
    x, y = torch.randn(2, 5, cfg.n_embd), torch.randn(2, cfg.n_head, 5, cfg.head_dim)
    merged = y.transpose(1, 2).reshape(2, 5, -1)
    torch.testing.assert_close(attn.output(y, x), attn.proj(0.5 * merged))  # zero-initialised: every gate 0.5
    with torch.no_grad():
        attn.gate.weight.normal_()
    gates = torch.sigmoid(x[..., :8] @ attn.gate.weight.T)  # (B, T, heads)
    torch.testing.assert_close(attn.output(y, x), attn.proj((y.transpose(1, 2) * gates[..., None]).reshape(2, 5, -1)))
    later = x.clone()
    later[..., 8:] += 1.0  # dimensions past the first 8 do not reach the gate
    torch.testing.assert_close(attn.output(y, x), attn.output(y, later))


def test_under_autocast_the_residual_stream_and_attention_inputs_are_bf16(monkeypatch):
    """The norms may hand back fp32 under autocast; the model casts so that the residual stream
    and q, k, v stay bf16 (the attention kernel then runs in bf16)."""
    import kit.modeling.modern as modern

    seen, streams = [], []
    real_sdpa = modern.F.scaled_dot_product_attention

    def recording_sdpa(q, k, v, **kwargs):
        seen.append((q.dtype, k.dtype, v.dtype))
        return real_sdpa(q, k, v, **kwargs)

    monkeypatch.setattr(modern.F, "scaled_dot_product_attention", recording_sdpa)
    model = tiny_model("dense")
    model.blocks[1].register_forward_hook(lambda module, args, out: streams.append(out.dtype))
    x = token_batch(T=2 * BLOCK, eots=((0,), (0,)))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
    assert seen and all(d == (torch.bfloat16,) * 3 for d in seen) and streams == [torch.bfloat16]
    seen.clear()
    with torch.no_grad():
        model(x)  # without autocast everything stays in the weights' fp32
    assert all(d == (torch.float32,) * 3 for d in seen)


def test_adam_epsilon_is_the_summed_loss_convention_over_the_batch():
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config

    cfg, _ = parse_config(sr.Hyperparameters, ["--v2", "0", "--model-size", "tiny", "--device", "cpu", "--batch-tokens", "4096", "--seq-len", "256"])
    adam = sr.build_optimizers(sr.build_model(cfg), cfg)[0]
    assert adam.defaults["eps"] == pytest.approx(1e-10 / 4096)


def test_recipe_defaults_follow_the_public_record():
    """Gate on 12 dimensions; the MLP's tall input matrix steps lr like the others; the long window
    reaches 14 blocks only in the last ~4% of the run (ceil(13.5 x progress))."""
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config

    small = ["--v2", "0", "--device", "cpu", "--seq-len", "256", "--bigram-buckets", "0"]  # the bigram table (193M weights) is not checked here
    cfg, _ = parse_config(sr.Hyperparameters, small)
    model = sr.build_model(cfg)
    muon = sr.build_optimizers(model, cfg)[1]
    assert model.blocks[0].attn.gate.weight.shape == (6, 12) and not model.blocks[0].attn.gate.weight.any()
    assert all(g["tall_scale"] is False for g in muon.param_groups)
    assert [sr.long_window_blocks(s, cfg) for s in (0, 1, 1770 * 12 // 27, 1700, 1770)] == [1, 1, 6, 13, 14]
    cfg, _ = parse_config(sr.Hyperparameters, [*small, "--attn-gate", "0", "--muon-tall-scale", "1"])
    model = sr.build_model(cfg)
    assert model.blocks[0].attn.gate is None and all(g["tall_scale"] for g in sr.build_optimizers(model, cfg)[1].param_groups)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softcapped_cross_entropy_equals_autograd_of_the_reference(dtype):
    from kit.modeling.losses import softcapped_cross_entropy

    g = torch.Generator().manual_seed(0)
    z = (8 * torch.randn(2, 50, 300, generator=g)).to(dtype).requires_grad_()
    targets = torch.randint(0, 300, (2, 50), generator=g)
    loss = softcapped_cross_entropy(z, targets, 15.0)
    (3.0 * loss).backward()
    z_ref = z.detach().double().requires_grad_()
    ref = torch.nn.functional.cross_entropy((15 * torch.tanh(z_ref / 15)).view(-1, 300), targets.view(-1))
    (3.0 * ref).backward()
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    assert abs(loss.item() - ref.item()) < tol
    assert z.grad.dtype == dtype
    torch.testing.assert_close(z.grad.double(), z_ref.grad, atol=tol * 1e-2, rtol=tol)


@pytest.mark.parametrize("fp8", [False, True])
def test_fused_loss_trains_like_the_plain_loss(fp8):
    """Same loss and gradients through the model with and without the fused loss (FP8 within its
    rounding); evaluation takes the plain path either way."""
    torch.manual_seed(0)
    cfg = dict(**MODERN_SIZES["tiny"], vocab_size=1024, max_seq_len=BLOCK, attn="dense", fp8_head=fp8)
    plain, fused = ModernGPT(ModernConfig(**cfg)), ModernGPT(ModernConfig(**cfg, fused_loss=True))
    with torch.no_grad():
        plain.lm_head.weight.normal_(0, 0.05)
    fused.load_state_dict(plain.state_dict())
    x, y = torch.randint(0, 1024, (2, BLOCK)), torch.randint(0, 1024, (2, BLOCK))
    a, b = plain(x, y), fused(x, y)
    a.backward()
    b.backward()
    tol = 0.02 if fp8 else 1e-5
    assert abs(a.item() - b.item()) < tol * a.item()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        if p.grad is not None:  # gradients that are ~0 here (1e-9: zero-initialised paths) only need to stay ~0
            assert (p.grad - q.grad).norm().item() <= (0.15 if fp8 else 1e-4) * p.grad.norm().item() + 1e-7, name
    plain.eval(), fused.eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(x, y), fused(x, y))


def test_bigram_ids_hash_token_pairs_and_reserve_a_row_for_unknown_predecessors():
    from kit.modeling.modern import bigram_ids

    idx = torch.tensor([[5, 7, 5, 7, 9], [7, 5, 7, 9, 9]])
    ids = bigram_ids(idx, torch.tensor([-1, 9]), 101)
    assert ids.min() >= 0 and ids.max() <= 100
    assert ids[0, 0] == 100 and ids[1, 0] != 100  # row 0 has no token before it, row 1 follows a 9
    assert ids[0, 1] == ids[0, 3] == ids[1, 2]  # every (5, 7) pair lands in one row
    assert ids[0, 2] == ids[1, 1] and ids[0, 1] != ids[0, 2]  # (7, 5) is another pair than (5, 7)
    assert ids[0, 4] == ids[1, 3]  # (7, 9)
    assert ids[1, 0] == bigram_ids(torch.tensor([[9, 7]]), torch.tensor([-1]), 101)[0, 1]  # (9, 7): given as the predecessor or inside
    assert (bigram_ids(torch.tensor([[5, EOT, 7]]), torch.tensor([3]), 101)[0, 1] == 100).item()  # a document's first token
    ids_all = bigram_ids(torch.randint(0, 50304, (4, 4096)), torch.full((4,), -1), 251_520)
    assert len(ids_all.unique()) > 0.9 * 4 * 4095 * (1 - 4 * 4096 / 251_520 / 2)  # spread: few collisions


def test_bigram_embedding_starts_as_a_no_op_and_reaches_every_block():
    torch.manual_seed(0)
    cfg = dict(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense")
    plain, bigram = ModernGPT(ModernConfig(**cfg)), ModernGPT(ModernConfig(**cfg, bigram_buckets=97))
    with torch.no_grad():
        plain.lm_head.weight.normal_(0, 0.05)
    bigram.load_state_dict(plain.state_dict(), strict=False)
    x = torch.randint(0, 1000, (2, BLOCK))
    torch.testing.assert_close(plain(x), bigram(x))  # zero-initialised table
    bigram(x, x).backward()
    assert bigram.bigram_embed.weight.grad.abs().sum() > 0 and all(b.bigram_mix.grad is not None for b in bigram.blocks)


def test_bigram_sign_trick_signs_each_row_read_by_its_pair():
    """bigram_sign_rows (the public record of 2026-05-20): the bigram embedding of a position is its hashed row times
    the sign vector of row (previous XOR token) % rows, row 0 where nothing comes before; a fixed table of +-1 from its
    own generator, so every other weight starts as without it; checked by hand on a small model."""
    from kit.modeling.modern import bigram_ids

    cfg = dict(**MODERN_SIZES["tiny"], max_seq_len=BLOCK, attn="dense", bigram_buckets=97)
    torch.manual_seed(0)
    plain = ModernGPT(ModernConfig(**cfg))
    torch.manual_seed(0)
    signed = ModernGPT(ModernConfig(**cfg, bigram_sign_rows=16))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), signed.state_dict().values()))
    table = signed.bigram_sign_table
    assert table.shape == (16, signed.config.n_embd) and set(table.unique().tolist()) == {-1.0, 1.0}
    with torch.no_grad():
        signed.bigram_embed.weight.normal_()
    idx, before = torch.tensor([[5, 7, 5, 7, 12]]), torch.tensor([3])
    rows = signed.bigram_embed.weight[bigram_ids(idx, before, 97)[0]]
    expected = rows * table[torch.tensor([3 ^ 5, 5 ^ 7, 7 ^ 5, 5 ^ 7, 7 ^ 12]) % 16]
    torch.testing.assert_close(signed.embed_tokens(idx, before)[2][0], expected)
    assert torch.equal(signed.embed_tokens(idx)[2][0, 0], signed.bigram_embed.weight[96] * table[0])  # nothing before: its own bigram row, signs of row 0
    after_a = signed.embed_tokens(torch.tensor([[5, EOT, 7]]))[2][0, 1]  # a document's first token: whatever came before, the same
    torch.testing.assert_close(after_a, signed.embed_tokens(torch.tensor([[9, EOT, 7]]))[2][0, 1])
    torch.testing.assert_close(after_a, signed.bigram_embed.weight[96] * table[0])
    with pytest.raises(ValueError, match="bigram_buckets"):
        ModernGPT(ModernConfig(**{**cfg, "bigram_buckets": 0}, bigram_sign_rows=16))


def test_fp8_mlp_flag_follows_the_gpu(monkeypatch):
    """--fp8-mlp up: FP8 forward products in the up projections where FP8 can run (here the CPU, as asked); on a GPU
    without FP8 (an RTX 3090) the MLPs stay bf16 and the kernel paths say so; inference loads it without FP8."""
    import train_gpt2_speedrun as sr
    from kit.core.config import parse_config
    from kit.modeling.fp8 import FP8ForwardLinear
    from kit.tools.runs import inference_config

    argv = ["--v2", "0", "--model-size", "tiny", "--seq-len", "256", "--bigram-buckets", "0", "--attn", "dense", "--fp8-mlp", "up"]
    cfg, _ = parse_config(sr.Hyperparameters, [*argv, "--device", "cpu"])
    assert isinstance(sr.build_model(cfg).blocks[0].mlp.up, FP8ForwardLinear)
    monkeypatch.setattr(sr, "on_gpu", lambda cfg: True)
    monkeypatch.setattr(sr, "gpu_has_fp8", lambda device: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    model = sr.build_model(parse_config(sr.Hyperparameters, argv)[0])
    assert type(model.blocks[0].mlp.up) is torch.nn.Linear and "MLP: bf16" in model.describe_paths() and model.flops_now(256)[1] == 0
    assert inference_config(sr, {"fp8_mlp": "both", "model_size": "tiny"}, "cpu").fp8_mlp == "off"
