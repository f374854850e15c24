"""The test-time-training variant (train_gpt2_ttt.py): the chunked dual form equals the token-by-token
inner updates, the layer and the whole model are causal, and the script trains its inner learning rate."""

import functools

import pytest
import torch

from train_gpt2_ttt import TTTLinear, ttt_linear, ttt_linear_sequential


def test_dual_form_equals_token_by_token_inner_gradient_steps():
    torch.manual_seed(0)
    B, H, T, D = 2, 3, 23, 8
    q, k, v = (torch.randn(B, H, T, D, dtype=torch.float64) for _ in range(3))
    w0, eta = torch.randn(H, D, D, dtype=torch.float64) * 0.1, torch.tensor([0.3, 1.0, 0.05], dtype=torch.float64)
    for chunk in (1, 5, 64):  # one token per update (plain online gradient descent), ragged last chunk, one chunk
        torch.testing.assert_close(ttt_linear(q, k, v, w0, eta, chunk), ttt_linear_sequential(q, k, v, w0, eta, chunk))


def test_the_inner_model_learns_a_fixed_map_from_the_sequence():
    """Values from one linear map of the keys: after some chunks the layer's inner model predicts them."""
    torch.manual_seed(1)
    H, T, D = 1, 256, 8
    k = torch.nn.functional.normalize(torch.randn(1, H, T, D), dim=-1)
    target = torch.randn(D, D)
    v = k @ target
    z = ttt_linear(k, k, v, torch.zeros(H, D, D), torch.tensor([1.0]), chunk=16)  # query = key: predict v from k
    early, late = ((z - v)[..., :16, :].norm() / v[..., :16, :].norm()), ((z - v)[..., -16:, :].norm() / v[..., -16:, :].norm())
    assert late < 0.5 * early, (early, late)


def causal(mixer, T=40, C=32, cut=25):
    x = torch.randn(2, T, C)
    changed = x.clone()
    changed[:, cut:] = torch.randn(2, T - cut, C)
    with torch.no_grad():
        return torch.allclose(mixer(x)[:, :cut], mixer(changed)[:, :cut], atol=1e-5, rtol=1e-5)


def test_ttt_layer_is_causal_within_and_across_chunks():
    torch.manual_seed(2)
    for cut in (25, 16, 3):  # inside a chunk, at a chunk boundary, in the first chunk
        assert causal(TTTLinear(32, 4, chunk=16), cut=cut)


def test_gpt_with_ttt_layers_is_causal():
    from kit.modeling.model import GPT, Block, gpt_config

    torch.manual_seed(3)
    model = GPT(gpt_config("tiny", block_size=32), block=functools.partial(Block, attention=lambda config: TTTLinear(config.n_embd, config.n_head, chunk=8))).eval()
    x = torch.randint(0, 50257, (2, 32))
    changed = x.clone()
    changed[:, 20:] = torch.randint(0, 50257, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[:, :20], model(changed)[:, :20], atol=1e-5, rtol=1e-5)


def test_ttt_script_trains_its_inner_learning_rate_and_counts_its_flops(tmp_path):
    import train_gpt2_ttt as script
    from conftest import FAST, read_metrics
    from kit.core.config import parse_config
    from kit.core.errors import UserError
    from kit.loop.train import main

    flags = [*FAST, "--data", "synthetic", "--ttt-chunk", "16", "--ttt-inner-lr", "0.5"]
    assert main(script.RECIPE, [*flags, "--max-steps", "2", "--val-every", "2", "--out-dir", str(tmp_path)]) == 0
    assert len(read_metrics(tmp_path)) == 2 and read_metrics(tmp_path, "val")[-1]["val_loss"] < 11
    cfg, _ = parse_config(script.Hyperparameters, flags)
    model = script.build_model(cfg)
    layers = [b.attn for b in model.h if isinstance(b.attn, TTTLinear)]
    assert len(layers) == 1 and model.h[-1].attn is layers[0]  # tiny: the top one of two layers
    assert layers[0].inner_lr().tolist() == pytest.approx([0.5] * layers[0].n_head)
    out = model(torch.randint(0, 50257, (2, cfg.seq_len)), torch.randint(0, 50257, (2, cfg.seq_len)))
    out.backward()
    assert layers[0].lr_logit.grad is not None and layers[0].lr_logit.grad.abs().sum() > 0 and layers[0].w0.grad.abs().sum() > 0
    from kit.modeling.flops import linear_weight_count

    d, T, D = model.config.n_embd, cfg.seq_len, layers[0].head_dim  # one attention layer (12 d T), one TTT layer (its inner work)
    assert model.flops_per_token(T) == 6 * linear_weight_count(model) + 12 * d * T + 3 * (3 * 2 * d * D + 2 * 2 * 16 * d)
    with pytest.raises(UserError, match="--ttt-layers 3: between 0 and the model's 2 layers"):
        script.build_model(parse_config(script.Hyperparameters, [*FAST, "--ttt-layers", "3"])[0])
