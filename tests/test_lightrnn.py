"""LightRNN: a bijective allocation, a normalised factorised distribution, an exact loss, and re-allocation."""

import contextlib
import itertools

import numpy as np
import torch

from kit.ideas.lightrnn import (LightRNNGPT, LightRNNHead, LightRNNTable, allocation_cost, apply_allocation, frequency_allocation, grid_shape,
                         measure_and_reallocate, placement_losses, reallocate)
from kit.modeling.model import gpt_config


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
    from kit.loop.train import main

    assert main(script.RECIPE, [*FAST, "--data", "synthetic", "--max-steps", "6", "--val-every", "6", "--out-dir", str(tmp_path)]) == 0
    vals = read_metrics(tmp_path, "val")
    assert vals[-1]["val_loss"] < vals[0]["val_loss"] - 0.5
    assert json.loads((tmp_path / "summary.json").read_text())["script"] == "train_gpt2_lightrnn.py"


def brute_force_best(cost_rows: np.ndarray) -> float:
    """Least summed cost of giving each of these tokens (rows of cost_rows) a distinct slot (column)."""
    n, slots = cost_rows.shape
    return min(cost_rows[np.arange(n), list(perm)].sum() for perm in itertools.permutations(range(slots), n))


def test_reallocation_keeps_a_bijection_lowers_the_cost_and_its_last_step_is_optimal():
    rng = np.random.default_rng(3)
    vocab, rows, cols = 18, 5, 4
    A, B = rng.exponential(size=(vocab, rows)), rng.exponential(size=(vocab, cols))
    row_of, col_of = frequency_allocation(rng.integers(0, 100, size=vocab), rows, cols)
    new_rows, new_cols, before, after = reallocate(row_of, col_of, A, B, rounds=4)
    cells = new_rows * cols + new_cols
    assert len(set(cells.tolist())) == vocab and new_rows.max() < rows and new_cols.max() < cols
    assert before == allocation_cost(row_of, col_of, A, B) and after == allocation_cost(new_rows, new_cols, A, B)
    assert after < before
    for r in range(rows):  # the last half-step: within each row, no other choice of columns is cheaper
        members = np.flatnonzero(new_rows == r)
        assert B[members, new_cols[members]].sum() <= brute_force_best(B[members]) + 1e-9


def test_reallocation_recovers_a_planted_allocation_from_a_transposed_start():
    """Costs 0 in a planted cell and 1 elsewhere (separately for rows and columns): starting from
    the planted table's columns fixed, the row step alone finds every planted row."""
    rows = cols = 3
    planted_rows, planted_cols = np.repeat(np.arange(rows), cols), np.tile(np.arange(cols), rows)
    A, B = np.ones((9, rows)), np.ones((9, cols))
    A[np.arange(9), planted_rows] = 0
    B[np.arange(9), planted_cols] = 0
    start_rows = (planted_rows + planted_cols) % rows  # same columns, rows shuffled within each column
    new_rows, new_cols, before, after = reallocate(start_rows, planted_cols, A, B)
    assert before > 0 and after == 0
    assert (new_rows == planted_rows).all() and (new_cols == planted_cols).all()


def test_reallocation_moves_nothing_when_every_measured_token_sits_in_its_best_cell():
    """Ties go to the current cell: tokens the measurement never saw (all costs 0) are not
    reshuffled when no measured token wants their cell (a plain assignment would reorder them)."""
    rng = np.random.default_rng(5)
    rows = cols = 6
    cells = rng.permutation(rows * cols)
    row_of, col_of = cells // cols, cells % cols
    A, B = np.ones((rows * cols, rows)), np.ones((rows * cols, cols))
    A[np.arange(rows * cols), row_of] = 0.0  # every token is where it is cheapest ...
    B[np.arange(rows * cols), col_of] = 0.0
    unseen = np.arange(0, rows * cols, 3)  # ... and a third of them never occurred: no cost anywhere
    A[unseen], B[unseen] = 0.0, 0.0
    new_rows, new_cols, before, after = reallocate(row_of, col_of, A, B)
    assert before == after == 0
    assert (new_rows == row_of).all() and (new_cols == col_of).all()


def test_placement_losses_are_the_summed_row_and_column_losses_of_each_token():
    head = small_head()
    h, targets = torch.randn(40, 16), torch.randint(0, 10, (40,))  # repeats: 40 positions, 10 tokens
    A = torch.zeros(103, head.table.rows, dtype=torch.float64)
    B = torch.zeros(103, head.table.cols, dtype=torch.float64)
    placement_losses(head, h, targets, A, B)
    for w in range(10):
        at = targets == w
        row_nll = -torch.log_softmax(head.row_out(h[at]), -1)
        shift = head.row_shift[head.table.row_of[w]] @ head.col_out.weight.t()
        col_nll = -torch.log_softmax(head.col_out(h[at]) + shift, -1)
        torch.testing.assert_close(A[w].float(), row_nll.sum(0), atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(B[w].float(), col_nll.sum(0), atol=1e-4, rtol=1e-5)
    assert (A[10:] == 0).all()


def test_moved_tokens_keep_a_normalised_distribution_and_an_exact_loss():
    head = small_head()
    cells = np.random.default_rng(4).permutation(head.table.rows * head.table.cols)[:103]
    apply_allocation(head.table, cells // head.table.cols, cells % head.table.cols)
    assert int(head.table.occupied.sum()) == 103
    h, targets = torch.randn(3, 7, 16), torch.randint(0, 103, (3, 7))
    log_probs = head.log_probs(h)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(3, 7), atol=1e-5, rtol=0)
    torch.testing.assert_close(head.loss(h, targets), -log_probs.gather(-1, targets[..., None]).mean(), atol=1e-5, rtol=1e-5)


def test_measure_and_reallocate_counts_the_tokens_it_moved():
    torch.manual_seed(0)
    model = LightRNNGPT(gpt_config("tiny", block_size=32), np.random.default_rng(2).integers(0, 100, size=50257))
    with torch.no_grad():  # a trained-looking head, so that some tokens have cheaper cells elsewhere
        for p in model.head.parameters():
            p.normal_(0, 0.5)
    rows_before, cols_before = model.head.table.row_of.clone(), model.head.table.col_of.clone()
    x = torch.randint(0, 2000, (4, 32))
    before, after, moved = measure_and_reallocate(model, [(x, x.roll(-1, 1))], contextlib.nullcontext)
    changed = int(((model.head.table.row_of != rows_before) | (model.head.table.col_of != cols_before)).sum())
    assert after < before and moved == changed > 0


def test_lightrnn_script_reallocates(tmp_path, capsys):
    import train_gpt2_lightrnn as script
    from conftest import FAST
    from kit.loop.train import main

    flags = [*FAST, "--data", "synthetic", "--max-steps", "4", "--val-every", "4", "--realloc-every", "2", "--realloc-tokens", "4096"]
    assert main(script.RECIPE, [*flags, "--out-dir", str(tmp_path)]) == 0
    assert "re-allocation at step 2:" in capsys.readouterr().out
