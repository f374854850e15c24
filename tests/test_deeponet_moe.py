"""The DeepONet router (train_gpt2_deeponet_moe.py): its scores are the branch-trunk inner product over the
context's running mean, the layer is causal (dropless), and the script trains with either router."""

import pytest
import torch

from train_gpt2_deeponet_moe import DeepONetMoEMLP, causal_mean


def test_scores_are_branch_of_the_running_mean_times_trunk_of_the_token():
    torch.manual_seed(0)
    layer = DeepONetMoEMLP(16, 4, 1, 0.0, basis=3, router_hidden=8)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        scores = layer.router_logits(x.reshape(-1, 16), x).view(2, 5, 4)
        for b in range(2):
            for t in range(5):
                context = x[b, : t + 1].mean(0)
                expected = layer.branch(context).view(4, 3) @ layer.trunk(x[b, t]) / 3 ** 0.5
                torch.testing.assert_close(scores[b, t], expected, atol=1e-5, rtol=1e-5)


def test_causal_mean_sees_only_the_past():
    x = torch.arange(12.0).view(1, 4, 3)
    torch.testing.assert_close(causal_mean(x)[0, 2], x[0, :3].mean(0))


def test_dropless_deeponet_moe_layer_is_causal():
    """With capacity (--capacity-factor > 0) whether a token is dropped depends on the whole batch, future
    tokens included, as in any capacity-limited MoE; dropless, only the router mixes tokens, and causally."""
    torch.manual_seed(1)
    layer = DeepONetMoEMLP(16, 4, 2, 0.0, basis=4, router_hidden=8)
    x = torch.randn(2, 30, 16)
    changed = x.clone()
    changed[:, 18:] = torch.randn(2, 12, 16)
    with torch.no_grad():
        torch.testing.assert_close(layer(x)[:, :18], layer(changed)[:, :18], atol=1e-5, rtol=1e-5)
        assert not torch.allclose(layer(x)[:, 18:], layer(changed)[:, 18:])


def test_script_trains_and_reports_the_loads_and_runs_the_plain_router_too(tmp_path):
    import json

    import train_gpt2_deeponet_moe as script
    import train_gpt2_moe as moe
    from conftest import FAST, read_metrics
    from kit.core.config import parse_config
    from kit.loop.train import main

    router = "deeponet"
    flags = [*FAST, "--data", "synthetic", "--experts", "2", "--router-basis", "4", "--router-hidden", "16"]
    assert main(script.RECIPE, [*flags, "--max-steps", "2", "--val-every", "2", "--out-dir", str(tmp_path)]) == 0
    assert len(read_metrics(tmp_path)) == 2
    summary = json.loads((tmp_path / "summary.json").read_text())
    loads = summary["run_report"]["moe_load"]
    assert len(loads) == 2 and all(sum(shares) == pytest.approx(1.0, abs=1e-3) for shares in loads)
    assert json.loads((tmp_path / "config.json").read_text())["router"] == router
    plain = script.build_model(parse_config(script.Hyperparameters, [*flags, "--router", "linear"])[0])
    assert {type(layer) for layer in plain.moe_layers()} == {moe.MoEMLP}
