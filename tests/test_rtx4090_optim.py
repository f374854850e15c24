"""train_gpt2_rtx4090_optim.py: each attention and head choice trains; validation stays exact."""

import json
import math

import pytest

from conftest import FAST, read_metrics


def run(tmp_path, *flags, capsys=None):
    import train_gpt2_rtx4090_optim as script
    from kit.loop.train import main

    code = main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "4", "--out-dir", str(tmp_path), *flags])
    return code, (capsys.readouterr().err if capsys else "")


@pytest.mark.parametrize("flags", [
    ["--attn", "gqa", "--kv-heads", "1"],
    ["--attn", "mla", "--kv-latent", "32", "--rope-dim", "8"],
    ["--head", "adaptive"],
    ["--head", "nce", "--negatives", "64"],
])
def test_variant_trains(tmp_path, flags):
    code, _ = run(tmp_path, *flags)
    assert code == 0
    train, vals = read_metrics(tmp_path), read_metrics(tmp_path, "val")
    assert len(train) == 4 and all(math.isfinite(e["loss"]) for e in train)
    assert vals[-1]["val_loss"] < vals[0]["val_loss"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["script"] == "train_gpt2_rtx4090_optim.py"


def test_sampled_head_validates_with_the_full_softmax(tmp_path):
    """At step 0 (untrained, same seed) the nce variant's validation equals the plain softmax's."""
    assert run(tmp_path / "nce", "--head", "nce", "--negatives", "64")[0] == 0
    assert run(tmp_path / "softmax", "--head", "softmax")[0] == 0
    first = [read_metrics(tmp_path / d, "val")[0]["val_loss"] for d in ("nce", "softmax")]
    assert first[0] == pytest.approx(first[1], abs=1e-6)


def test_kv_heads_must_divide_the_heads(tmp_path, capsys):
    code, err = run(tmp_path, "--attn", "gqa", "--kv-heads", "3", capsys=capsys)
    assert code == 2 and "--kv-heads 3 must divide the 2 heads" in err
