"""The masked diffusion model (train_gpt2_diffusion.py): the masking schedule and the NELBO's weighting against hand
computations, its Monte-Carlo estimate against the exact bound of a tiny model (every mask pattern, integrated
over t), the sampler (fills every mask, keeps the prompt, spends exactly its steps, block by block), the
script's run and scripts/generate.py on it."""

import itertools
import math

import numpy as np
import pytest
import torch

from kit.modeling.model import gpt_config
from train_gpt2_diffusion import MASK, DiffusionGPT, diffusion_nelbo, masking_times, sample, unmask_count


def test_masking_times_cover_the_range_evenly_and_the_nelbo_weights_each_masked_token_by_one_over_t():
    t = masking_times(4, eps=0.0, stratified_offset=0.5)
    torch.testing.assert_close(t, torch.tensor([0.125, 0.375, 0.625, 0.875]))
    drawn = masking_times(1000, eps=0.1, generator=torch.Generator().manual_seed(0))
    assert drawn.min() >= 0.1 and drawn.max() <= 1.0
    counts = np.histogram(drawn.numpy(), bins=10, range=(0.1, 1.0))[0]
    assert counts.max() - counts.min() <= 1  # stratified: one draw per 1/1000 of the range
    # logits all zero over 4 tokens: -log p = log 4 at every position
    logits, clean = torch.zeros(2, 3, 4), torch.tensor([[0, 1, 2], [3, 0, 1]])
    masked = torch.tensor([[True, False, True], [False, False, True]])
    t = torch.tensor([0.5, 0.25])
    expected = (2 * math.log(4) / 0.5 + 1 * math.log(4) / 0.25) / 6
    assert diffusion_nelbo(logits, clean, masked, t).item() == pytest.approx(expected)


def test_the_head_never_predicts_the_mask_and_evaluation_is_repeatable():
    torch.manual_seed(0)
    model = DiffusionGPT(gpt_config("tiny", block_size=16))
    x = torch.randint(0, 50257, (3, 16))
    assert model(x).shape == (3, 16, 50258) and torch.isinf(model(x)[..., MASK]).all()
    model.eval()
    assert model(x, x).item() == model(x, x).item()
    model.train()
    z, masked, t = model.corrupt(x)
    assert torch.equal(z[masked], torch.full_like(z[masked], MASK)) and torch.equal(z[~masked], x[~masked])


SMALL = dict(vocab_size=64)  # a 64-token vocabulary (+ MASK = 64): logits of a few KB, not of GPT-2's 50,258


def exact_nelbo(model, x, eps):
    """The bound by enumeration: every mask pattern m of the L tokens, its probability t^|m| (1-t)^(L-|m|)
    integrated over t in [eps, 1] with the 1/t weight (a Beta-type integral, by a fine trapezoid rule)."""
    L = x.size(1)
    t = torch.linspace(eps, 1, 20001, dtype=torch.float64)
    total = 0.0
    with torch.no_grad():
        for pattern in itertools.product([False, True], repeat=L):
            masked = torch.tensor(pattern)[None]
            if not masked.any():
                continue
            z = torch.where(masked, torch.full_like(x, model.mask_id), x)
            nll = torch.nn.functional.cross_entropy(model(z)[0].double(), x[0], reduction="none")
            k = int(masked.sum())
            weight = torch.trapezoid(t ** (k - 1) * (1 - t) ** (L - k), t).item()
            total += weight * nll[masked[0]].sum().item()
    return total / L


def test_the_monte_carlo_nelbo_matches_the_exact_bound_of_a_tiny_model():
    torch.manual_seed(1)
    model = DiffusionGPT(gpt_config("tiny", block_size=4, **SMALL), eps=1e-3)
    x = torch.randint(0, 64, (1, 4))
    exact = exact_nelbo(model, x, 1e-3)
    batch = x.expand(4000, 4)
    with torch.no_grad():
        model.train()  # random t (stratified) and masks
        z, masked, t = model.corrupt(batch)
        logits = model(z)
        estimate = diffusion_nelbo(logits, batch, masked, t).item()
        nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), batch.reshape(-1), reduction="none").view(4000, 4)
        per_row = (nll * masked / t[:, None]).sum(1) / 4  # each row's own estimate; their mean is the batch's
    assert estimate == pytest.approx(per_row.mean().item(), rel=1e-5)
    error = per_row.std().item() / math.sqrt(4000)  # iid standard error, conservative for stratified t
    assert abs(estimate - exact) < 4 * error + 1e-3, (estimate, exact, error)
    assert exact > 0


def test_the_sampler_fills_every_mask_keeps_the_prompt_and_spends_exactly_its_steps():
    torch.manual_seed(2)
    model = DiffusionGPT(gpt_config("tiny", block_size=64, **SMALL)).eval()
    prompt = torch.randint(0, 64, (3, 5))
    seen = []
    out = sample(model, prompt, 24, steps=6, on_step=lambda x: seen.append(x.clone()))
    assert out.shape == (3, 24) and (out < 64).all()  # every mask filled, never with MASK
    assert len(seen) == 6 and all(torch.equal(x[:, :5], prompt) for x in seen)
    revealed = [int((x[:, 5:] != 64).sum(1)[0]) for x in seen]
    assert revealed == [4, 8, 12, 16, 20, 24]  # 24 tokens over 6 passes
    assert [unmask_count(10, s) for s in (3, 2, 1)] == [4, 5, 10]
    # block-wise: 3 blocks of 8, 2 passes each; a block is complete before the next starts, and no pass sees beyond its block
    lengths = []
    original = model.forward
    model.forward = lambda idx, targets=None: (lengths.append(idx.size(1)), original(idx))[1]
    seen.clear()
    sample(model, prompt, 24, steps=6, block_len=8, unmask="random", on_step=lambda x: seen.append(x.clone()))
    assert lengths == [13, 13, 21, 21, 29, 29]
    assert [int((x[0, 5:] != 64).sum()) for x in seen] == [4, 8, 12, 16, 20, 24]
    greedy = [sample(model, prompt, 8, steps=4, temperature=0) for _ in range(2)]
    assert torch.equal(*greedy)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """A 2-step diffusion run and a 1-step baseline run on synthetic data (CPU), shared by the tests below."""
    import train_gpt2 as baseline
    import train_gpt2_diffusion as script
    from conftest import FAST
    from kit.loop.train import main

    folder = tmp_path_factory.mktemp("diffusion_runs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("KIT_DATA_DIR", str(tmp_path_factory.getbasetemp() / "kit_data"))
        common = [*FAST, "--data", "synthetic", "--export", "1"]
        assert main(script.RECIPE, [*common, "--max-steps", "2", "--val-every", "2", "--out-dir", str(folder / "diffusion")]) == 0
        assert main(baseline.RECIPE, [*common, "--max-steps", "1", "--val-every", "0", "--out-dir", str(folder / "ar")]) == 0
    return folder


def test_diffusion_script_trains_and_generate_samples_from_its_run(tiny_runs, capsys):
    import train_gpt2_diffusion as script
    from conftest import FAST, load_module, read_metrics
    from kit.core.errors import UserError
    from kit.core.config import parse_config

    vals = read_metrics(tiny_runs / "diffusion", "val")
    assert len(vals) == 2 and 5 < vals[-1]["val_loss"] < 12  # ~ log(50258) per token at the start
    generate = load_module("scripts/generate.py", "generate_tool")
    line = generate.main([str(tiny_runs / "diffusion"), "--prompt", "Hello", "--max-new-tokens", "8", "--diffusion-steps", "4", "--device", "cpu"])
    assert "8 tokens in" in line and "diffusion: 4 steps, unmask confidence" in line
    assert "--- Hello" in capsys.readouterr().out
    with pytest.raises(UserError, match="--attn: this script does not read it"):
        parse_config(script.Hyperparameters, [*FAST, "--attn", "sdpa"])


def test_the_diffusion_benchmark_times_both_samplers_and_scores_their_samples(tiny_runs, tmp_path):
    """scripts/bench_diffusion.py on tiny CPU runs (the baseline judging too): a row per model, length and batch,
    each with speed and quality, and the trade-off plot."""
    import json

    from conftest import load_module

    bench = load_module("scripts/bench_diffusion.py", "bench_diffusion")
    line = bench.main(["--diffusion", str(tiny_runs / "diffusion"), "--autoregressive", str(tiny_runs / "ar"), "--judge", str(tiny_runs / "ar"),
                       "--out", str(tmp_path / "bench"), "--steps", "2,4", "--batches", "1,2", "--lengths", "8", "--samples", "2",
                       "--repeats", "1", "--device", "cpu"])
    rows = json.loads((tmp_path / "bench" / "bench_diffusion.json").read_text())["rows"]
    assert line.startswith("6 rows") and [(r["model"], r["batch"]) for r in rows] == [(m, b) for m in ("autoregressive", "diffusion 2", "diffusion 4") for b in (1, 2)]
    assert all(r["tokens_per_s"] > 0 and 1 < r["gen_ppl"] < 1e6 and 0 < r["distinct_1"] <= 1 for r in rows)
    assert (tmp_path / "bench" / "tradeoff.png").stat().st_size > 0
    (tmp_path / "bench" / "tradeoff.png").unlink()
    assert bench.main(["--replot", str(tmp_path / "bench" / "bench_diffusion.json")]).startswith("6 rows drawn again")
    assert (tmp_path / "bench" / "tradeoff.png").stat().st_size > 0
    assert bench.distinct_n(torch.tensor([[1, 2, 1, 2]]), 2) == pytest.approx(2 / 3)
