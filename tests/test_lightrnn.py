"""LightRNN: a bijective allocation, a normalised factorised distribution, and an exact loss."""

import numpy as np
import torch

from kit.lightrnn import LightRNNGPT, LightRNNHead, LightRNNTable, frequency_allocation, grid_shape
from kit.model import gpt_config


def test_grid_for_gpt2():
    assert grid_shape(50257) == (225, 224)


def test_allocation_is_a_bijection_and_spreads_frequent_tokens():
    counts = np.random.default_rng(0).integers(0, 10_000, size=1000)
    rows, cols = grid_shape(1000)
    row_of, col_of = frequency_allocation(counts, rows, cols)
    cells = row_of * cols + col_of
    assert len(set(cells.tolist())) == 1000 and cells.max() < rows * cols
    top = np.argsort(-counts, kind="stable")[:rows]
    assert sorted(row_of[top].tolist()) == list(range(rows))  # the `rows` most frequent tokens: one per row


def small_head(vocab=103, width=16):
    torch.manual_seed(0)
    table = LightRNNTable(np.random.default_rng(1).integers(0, 100, size=vocab))
    head = LightRNNHead(table, width)
    with torch.no_grad():
        for p in head.parameters():
            p.normal_(0, 0.5)
    return head


def test_factorised_distribution_sums_to_one_over_the_vocabulary():
    head = small_head()
    assert head.table.rows * head.table.cols > 103  # some cells are empty
    log_probs = head.log_probs(torch.randn(3, 7, 16))
    assert log_probs.shape == (3, 7, 103)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 7), atol=1e-5, rtol=0)


def test_loss_is_minus_log_p_of_the_targets():
    head = small_head()
    h, targets = torch.randn(4, 5, 16), torch.randint(0, 103, (4, 5))
    direct = -head.log_probs(h).gather(-1, targets[..., None]).mean()
    torch.testing.assert_close(head.loss(h, targets), direct, atol=1e-5, rtol=1e-5)


def test_lightrnn_gpt_trains_and_is_small():
    counts = np.random.default_rng(2).integers(0, 100, size=50257)
    model = LightRNNGPT(gpt_config("tiny", block_size=32), counts)
    x = torch.randint(0, 50257, (2, 32))
    loss = model(x, x)
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - np.log(50257)) < 0.5
    assert sum(p.numel() for p in model.wte.parameters()) == (225 + 224) * 32
    assert model(x).shape == (2, 32, 50257)


def test_lightrnn_script_smoke(tmp_path):
    import json

    import train_gpt2_lightrnn as script
    from conftest import FAST, read_metrics
    from kit.train import main

    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "6", "--val-every", "6", "--out-dir", str(tmp_path)]) == 0
    vals = read_metrics(tmp_path, "val")
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 0.5
    assert json.loads((tmp_path / "summary.json").read_text())["script"] == "train_gpt2_lightrnn.py"
