"""The operator-network mixer (train_gpt2_operator.py): its FFT form equals the direct kernel integral
over the past, it is causal alone and inside the model, and the script trains and counts its FLOPs."""

import functools

import pytest
import torch

from train_gpt2_operator import CausalOperatorMixer


def test_fft_form_equals_the_direct_sum_over_the_past():
    """y_t = proj(gate(x_t) * sum_p sum_{s <= t} branch_p(x_s) * kernel_p(t - s)), summed by hand."""
    torch.manual_seed(0)
    mixer = CausalOperatorMixer(8, max_len=16, basis=3).double()
    x = torch.randn(2, 12, 8, dtype=torch.float64)
    with torch.no_grad():
        branch = mixer.branch(x).view(2, 12, 3, 8)
        kernel = mixer.kernel(12).view(3, 8, 12)  # (basis, width, lag)
        direct = torch.stack([sum(branch[:, s] * kernel[:, :, t - s] for s in range(t + 1)).sum(1) for t in range(12)], dim=1)
        expected = mixer.proj(torch.sigmoid(mixer.gate(x)) * direct)
        torch.testing.assert_close(mixer(x), expected, atol=1e-6, rtol=1e-6)


def test_each_basis_term_decays_on_its_own_timescale():
    """The envelopes run from 4 tokens to the context: the shortest term is near zero at lag 64, the longest is not."""
    mixer = CausalOperatorMixer(4, max_len=256, basis=3)
    envelope = torch.exp(-torch.tensor(64.0) / mixer.timescales)
    assert mixer.timescales[0] == pytest.approx(4.0) and mixer.timescales[-1] == pytest.approx(256.0)
    assert envelope[0] < 1e-6 and envelope[-1] > 0.7


def test_operator_mixer_is_causal():
    torch.manual_seed(1)
    mixer = CausalOperatorMixer(16, max_len=40, basis=2)
    x = torch.randn(2, 40, 16)
    for cut in (1, 17, 39):
        changed = x.clone()
        changed[:, cut:] = torch.randn(2, 40 - cut, 16)
        with torch.no_grad():
            torch.testing.assert_close(mixer(x)[:, :cut], mixer(changed)[:, :cut], atol=1e-5, rtol=1e-5)


def test_gpt_with_operator_mixers_is_causal():
    from kit.modeling.model import GPT, Block, gpt_config

    torch.manual_seed(2)
    mixer = lambda config: CausalOperatorMixer(config.n_embd, config.block_size, basis=2)  # noqa: E731
    model = GPT(gpt_config("tiny", block_size=32), block=functools.partial(Block, attention=mixer)).eval()
    x = torch.randint(0, 50257, (2, 32))
    changed = x.clone()
    changed[:, 20:] = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :20], model(changed)[:, :20], atol=1e-5, rtol=1e-5)


def test_operator_script_trains_and_counts_its_flops(tmp_path):
    import math

    import train_gpt2_operator as script
    from conftest import FAST, read_metrics
    from kit.core.config import parse_config
    from kit.core.errors import UserError
    from kit.loop.train import main
    from kit.modeling.flops import linear_weight_count

    flags = [*FAST, "--data", "synthetic", "--operator-basis", "2"]
    assert main(script.RECIPE, [*flags, "--max-steps", "2", "--val-every", "2", "--out-dir", str(tmp_path)]) == 0
    assert len(read_metrics(tmp_path)) == 2 and read_metrics(tmp_path, "val")[-1]["val_loss"] < 11
    cfg, _ = parse_config(script.Hyperparameters, flags)
    model = script.build_model(cfg)
    assert isinstance(model.h[-1].attn, CausalOperatorMixer) and not isinstance(model.h[0].attn, CausalOperatorMixer)
    d, T = model.config.n_embd, cfg.seq_len
    fft = 3 * 2 * d * (2 * 2.5 * 2 * math.log2(2 * T) + 6)
    assert model.flops_per_token(T) == int(6 * linear_weight_count(model) + 12 * d * T + fft)
    with pytest.raises(UserError, match="--operator-layers 3: between 0 and the model's 2 layers"):
        script.build_model(parse_config(script.Hyperparameters, [*FAST, "--operator-layers", "3"])[0])
