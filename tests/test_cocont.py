"""CoCoNT smoothing and LightRNN multi-token prediction against direct computations."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import make_shard
from train_gpt2_lightrnn_cocont_mtp import LightRNNCoCoNTGPT, row_bigram_counts, smoothed_row_loss, smoothed_targets
from kit.ideas.lightrnn import grid_shape
from kit.modeling.model import gpt_config


def test_smoothed_target_sums_to_one_and_eps_zero_is_cross_entropy():
    torch.manual_seed(0)
    p = torch.softmax(torch.randn(50, 9), -1)
    rows, previous = torch.randint(0, 9, (6,)), torch.randint(0, 50, (6,))
    torch.testing.assert_close(smoothed_targets(rows, previous, p, 0.3).sum(-1), torch.ones(6))
    logits = torch.randn(6, 9)
    torch.testing.assert_close(smoothed_row_loss(logits, rows, previous, p, 0.0), F.cross_entropy(logits, rows))
    by_hand = -sum(((0.7 * F.one_hot(rows[i], 9) + 0.3 * p[previous[i]]) * F.log_softmax(logits[i], -1)).sum() for i in range(6)) / 6
    torch.testing.assert_close(smoothed_row_loss(logits, rows, previous, p, 0.3), by_hand)


def test_row_bigram_counts(tmp_path):
    tokens = make_shard(tmp_path / "a.bin", 3000)
    vocab = 50257
    rows, _ = grid_shape(vocab)
    row_of = np.arange(vocab) % rows
    counts = row_bigram_counts([tmp_path / "a.bin"], row_of, rows)
    expected = np.zeros((vocab, rows))
    for a, b in zip(tokens[:-1], tokens[1:]):
        expected[a, row_of[b]] += 1
    assert np.array_equal(counts, expected)
    assert np.array_equal(row_bigram_counts([tmp_path / "a.bin"], row_of, rows), counts)  # from the cache


def model_with(mtp_k, eps):
    torch.manual_seed(0)
    counts = np.random.default_rng(0).integers(0, 100, size=50257)
    rows, _ = grid_shape(50257)
    bigrams = np.random.default_rng(1).integers(0, 5, size=(50257, rows)).astype(np.float32)
    model = LightRNNCoCoNTGPT(gpt_config("tiny", block_size=16), counts, bigrams, eps=eps, mtp_k=mtp_k)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return model


def test_mtp_loss_is_the_sum_of_per_offset_cross_entropies():
    model = model_with(mtp_k=3, eps=0.0)
    model.mtp_weight.fill_(0.5)
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    captured, original = {}, model.loss

    def recording_loss(h, targets, idx=None):
        captured["h"] = h
        return original(h, targets, idx)

    model.loss = recording_loss
    total = model.train()(x, y)
    h = captured["h"]

    def nll(hidden, targets):  # -log P(target) from the full factorised distribution
        return -model.head.log_probs(hidden).gather(-1, targets[..., None]).mean()

    expected = nll(h, y)
    for k in (1, 2):
        expected = expected + 0.5 * nll(h[:, :-k] + model.mtp_adapters[k - 1](h[:, :-k]), y[:, k:])
    torch.testing.assert_close(total, expected, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(model.eval()(x, y), nll(h, y), atol=1e-4, rtol=1e-5)  # validation: next token only


def test_smoothing_applies_in_training_only():
    model = model_with(mtp_k=1, eps=0.2)
    x, y = torch.randint(0, 50257, (2, 16)), torch.randint(0, 50257, (2, 16))
    train_loss, eval_loss = model.train()(x, y), model.eval()(x, y)
    assert train_loss.item() != pytest.approx(eval_loss.item(), abs=1e-4)
    plain = model_with(mtp_k=1, eps=0.0)
    torch.testing.assert_close(plain.train()(x, y), plain.eval()(x, y), atol=1e-5, rtol=1e-5)


def test_script_smoke(tmp_path):
    import json

    import train_gpt2_lightrnn_cocont_mtp as script
    from conftest import FAST, read_metrics
    from kit.loop.train import main

    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "6", "--val-every", "6", "--out-dir", str(tmp_path)]) == 0
    vals = read_metrics(tmp_path, "val")
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 0.5
    assert json.loads((tmp_path / "summary.json").read_text())["script"] == "train_gpt2_lightrnn_cocont_mtp.py"
