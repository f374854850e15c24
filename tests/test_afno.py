"""The causal Fourier (AFNO-style) mixer: causal with padding, and the check catches a circular FFT."""

import pytest
import torch

from train_gpt2_lightrnn_afno import BlockDiagonalMLP, CausalFourierMixer


def is_causal(layer, T=40, width=32, t=17) -> bool:
    """Do outputs up to t stay the same when inputs after t change?"""
    torch.manual_seed(0)
    x = torch.randn(2, T, width)
    changed = x.clone()
    changed[:, t + 1:] = torch.randn(2, T - t - 1, width)
    with torch.no_grad():
        return torch.allclose(layer(x)[:, :t + 1], layer(changed)[:, :t + 1], atol=1e-5, rtol=1e-5)


def test_padded_fft_convolution_is_causal():
    torch.manual_seed(1)
    assert is_causal(CausalFourierMixer(32, max_len=64, n_blocks=4))


def test_the_check_catches_an_unpadded_fft():
    torch.manual_seed(1)
    leaky = CausalFourierMixer(32, max_len=64, n_blocks=4, causal_padding=False)
    assert not is_causal(leaky)  # circular convolution: early outputs see the last inputs


def test_fft_convolution_equals_a_direct_causal_sum():
    torch.manual_seed(2)
    mixer = CausalFourierMixer(8, max_len=16, n_blocks=2, shrink=0.0)
    x = torch.randn(1, 12, 8)
    with torch.no_grad():
        u = mixer.mlp(x)[0]  # (T, C)
        k = mixer.kernel[:, :12]
        direct = torch.stack([sum(u[s] * k[:, t - s] for s in range(t + 1)) for t in range(12)])
        torch.testing.assert_close(mixer(x)[0], mixer.proj(direct), atol=1e-5, rtol=1e-5)


def test_block_diagonal_mlp_does_not_mix_blocks():
    torch.manual_seed(3)
    mlp = BlockDiagonalMLP(16, n_blocks=4)
    x = torch.randn(1, 3, 16)
    changed = x.clone()
    changed[..., :4] += 1.0  # only the first block's channels
    with torch.no_grad():
        torch.testing.assert_close(mlp(x)[..., 4:], mlp(changed)[..., 4:])
        assert not torch.allclose(mlp(x)[..., :4], mlp(changed)[..., :4])


def test_gpt_with_fourier_mixers_is_causal():
    import functools

    from train_gpt2_lightrnn_afno import fourier_mixer
    from kit.modeling.model import GPT, Block, gpt_config

    torch.manual_seed(4)
    model = GPT(gpt_config("tiny", block_size=32), block=functools.partial(Block, attention=functools.partial(fourier_mixer, n_blocks=4))).eval()
    x = torch.randint(0, 50257, (2, 32))
    changed = x.clone()
    changed[:, 20:] = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :20], model(changed)[:, :20], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attn_layers", [0, 1])
def test_lightrnn_afno_script_is_causal_trains_and_reallocates(tmp_path, capsys, attn_layers):
    import train_gpt2_lightrnn_afno as script
    from conftest import FAST, read_metrics
    from train_gpt2_lightrnn_afno import CausalFourierMixer
    from kit.core.config import parse_config
    from kit.loop.train import main

    flags = [*FAST, "--data", "synthetic", "--hybrid-attn-layers", str(attn_layers), "--fourier-blocks", "4"]
    realloc = ["--realloc-every", "2", "--realloc-tokens", "2048"]
    assert main(script.RECIPE, [*flags, *realloc, "--max-steps", "4", "--val-every", "4", "--out-dir", str(tmp_path)]) == 0
    assert "re-allocation at step 2:" in capsys.readouterr().out
    vals = read_metrics(tmp_path, "val")
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]
    cfg, _ = parse_config(script.Hyperparameters, flags)
    model = script.build_model(cfg).eval()
    assert [isinstance(b.attn, CausalFourierMixer) for b in model.h] == [i >= attn_layers for i in range(2)]
    x = torch.randint(0, 50257, (2, 32))
    changed = x.clone()
    changed[:, 20:] = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :20], model(changed)[:, :20], atol=1e-5, rtol=1e-5)
