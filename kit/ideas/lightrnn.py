"""LightRNN (Li et al., 2016) factorisation of the vocabulary, adapted to a transformer.

The vocabulary sits in an R x C table (R = ceil(sqrt(V)), C = ceil(V / R); 225 x 224 for GPT-2).
Token w has a row r(w) and a column c(w).
- Input: the embedding of w is [row vector of r(w) ; column vector of c(w)] (each half the width),
  (R + C) x width/2 numbers instead of V x width.
- Output: P(w | h) = P(r(w) | h) * P(c(w) | h, r(w)). The row softmax is over R rows; the column
  softmax over C columns takes h shifted by a learned vector of the row, E[r], so its logits are
  W_c h + W_c E[r]: conditioned on the true row while training, and computed for every row at
  once (an R x C table of offsets) when the full distribution is needed. Empty cells get no mass.
The loss -log P(r|h) - log P(c|h,r) is the exact negative log-likelihood of the factorised model,
so validation losses compare with a full softmax's.
Allocation: tokens ranked by training frequency fill the table column by column (rank k -> row
k mod R, column k div R), so every row holds a mix of frequent and rare tokens.
Re-allocation (the paper's refinement): with the trained model, measure for every token w the
total loss it would have in row r, A[w, r] = sum over its occurrences of -log P(r | h), and in
column c, B[w, c] = sum of -log P(c | h, current row), then move tokens to cells that lower
sum_w A[w, r(w)] + B[w, c(w)]. The exact minimum-cost assignment of 50257 tokens to 50400 cells
is too large for the Hungarian method, so reallocate() alternates exact sub-problems (scipy's
linear_sum_assignment): rows within each column, then columns within each row; each half-step
is optimal for what it may change, so the total cost never rises.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.modeling.model import GPT, Block


def grid_shape(vocab_size: int) -> tuple[int, int]:
    rows = math.ceil(math.sqrt(vocab_size))
    return rows, math.ceil(vocab_size / rows)


def frequency_allocation(counts: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """(row_of, col_of) for each token: frequency rank k goes to cell (k mod rows, k div rows)."""
    if len(counts) > rows * cols:
        raise ValueError(f"{len(counts)} tokens do not fit a {rows} x {cols} table")
    order = np.argsort(-np.asarray(counts), kind="stable")
    rank = np.empty(len(counts), dtype=np.int64)
    rank[order] = np.arange(len(counts))
    return rank % rows, rank // rows


class LightRNNTable(nn.Module):
    """The token -> (row, column) allocation, and which cells hold a token."""

    def __init__(self, counts: np.ndarray):
        super().__init__()
        self.vocab_size = len(counts)
        self.rows, self.cols = grid_shape(self.vocab_size)
        row_of, col_of = frequency_allocation(counts, self.rows, self.cols)
        self.register_buffer("row_of", torch.from_numpy(row_of))
        self.register_buffer("col_of", torch.from_numpy(col_of))
        occupied = torch.zeros(self.rows, self.cols, dtype=torch.bool)
        occupied[self.row_of, self.col_of] = True
        self.register_buffer("occupied", occupied)


class LightRNNEmbedding(nn.Module):
    def __init__(self, table: LightRNNTable, width: int):
        super().__init__()
        self.table = table
        self.row = nn.Embedding(table.rows, width // 2)
        self.col = nn.Embedding(table.cols, width - width // 2)

    def forward(self, idx):
        return torch.cat([self.row(self.table.row_of[idx]), self.col(self.table.col_of[idx])], dim=-1)


class LightRNNHead(nn.Module):
    def __init__(self, table: LightRNNTable, width: int):
        super().__init__()
        self.table = table
        self.row_out = nn.Linear(width, table.rows, bias=False)
        self.col_out = nn.Linear(width, table.cols, bias=False)
        self.row_shift = nn.Parameter(torch.zeros(table.rows, width))  # E[r]: what the column softmax knows of the row

    def column_offsets(self):
        """(R, C): W_c E[r] for every row, -inf where a cell is empty."""
        offsets = self.row_shift @ self.col_out.weight.t()
        return offsets.masked_fill(~self.table.occupied, float("-inf"))

    def loss(self, h, targets):
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        rows, cols = self.table.row_of[targets], self.table.col_of[targets]
        row_lp = F.log_softmax(self.row_out(h).float(), -1).gather(-1, rows[:, None])
        col_logits = self.col_out(h).float() + self.column_offsets()[rows].float()
        col_lp = F.log_softmax(col_logits, -1).gather(-1, cols[:, None])
        return -(row_lp + col_lp).mean()

    def log_probs(self, h):
        """log P(w | h) for every token (last dimension = vocabulary)."""
        shape = h.shape[:-1]
        h = h.reshape(-1, h.size(-1))
        row_lp = F.log_softmax(self.row_out(h).float(), -1)  # (N, R)
        col_lp = F.log_softmax(self.col_out(h).float()[:, None, :] + self.column_offsets().float()[None], -1)  # (N, R, C)
        joint = row_lp[:, :, None] + col_lp
        cells = self.table.row_of * self.table.cols + self.table.col_of
        return joint.view(len(h), -1)[:, cells].view(*shape, -1)


class LightRNNGPT(GPT):
    """The baseline GPT with LightRNN's factorised input embedding and output distribution."""

    def __init__(self, config, counts: np.ndarray, block=Block):
        super().__init__(config, block=block)
        table = LightRNNTable(counts)
        self.wte = LightRNNEmbedding(table, config.n_embd)
        self.lm_head = None
        self.head = LightRNNHead(table, config.n_embd)
        self.wte.apply(self._init_weights)
        self.head.apply(self._init_weights)
        nn.init.normal_(self.head.row_shift, std=0.02)

    def logits(self, h):
        return self.head.log_probs(h)

    def loss(self, h, targets, idx=None):
        return self.head.loss(h, targets)


# ----- re-allocation -----

def allocation_cost(row_of, col_of, A, B) -> float:
    tokens = np.arange(len(row_of))
    return float(A[tokens, row_of].sum() + B[tokens, col_of].sum())


def reassign_within(groups_of, slot_of, cost) -> np.ndarray:
    """For each value g of groups_of (a column, say), give its tokens distinct slots (rows) so that
    the summed cost[token, slot] is least: one exact linear assignment per group. Ties go to the
    slot a token has: a token the measurement never saw (all its costs 0) stays where it is."""
    from scipy.optimize import linear_sum_assignment

    new = slot_of.copy()
    stay_bonus = 1e-9 * max(1.0, float(np.abs(cost).max()))
    for g in np.unique(groups_of):
        members = np.flatnonzero(groups_of == g)
        group_cost = cost[members].astype(np.float64)
        group_cost[np.arange(len(members)), slot_of[members]] -= stay_bonus
        chosen, slot = linear_sum_assignment(group_cost)
        new[members[chosen]] = slot
    return new


def reallocate(row_of, col_of, A, B, rounds: int = 3):
    """Lower sum_w A[w, r(w)] + B[w, c(w)] by alternating exact assignments: rows within each
    column, then columns within each row. Returns (row_of, col_of, cost before, cost after)."""
    row_of, col_of = np.asarray(row_of).copy(), np.asarray(col_of).copy()
    before = allocation_cost(row_of, col_of, A, B)
    cost = before
    for _ in range(rounds):
        row_of = reassign_within(col_of, row_of, A)
        col_of = reassign_within(row_of, col_of, B)
        new_cost = allocation_cost(row_of, col_of, A, B)
        improved = new_cost < cost - 1e-9 * abs(cost)
        cost = new_cost
        if not improved:
            break
    return row_of, col_of, before, cost


@torch.no_grad()
def placement_losses(head: "LightRNNHead", h, targets, A, B) -> None:
    """Add each target token's row and column losses at these positions into A (V x R) and B (V x C)
    (float64, on h's device): -log P(r | h) for every row r, -log P(c | h, r(w)) for every column c,
    the column distribution taken over all columns (empty cells included, as places to move to)."""
    h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    row_nll = -F.log_softmax(head.row_out(h).float(), -1)
    offsets = head.row_shift @ head.col_out.weight.t()  # unmasked: every cell is a candidate
    col_nll = -F.log_softmax(head.col_out(h).float() + offsets[head.table.row_of[targets]].float(), -1)
    A.index_add_(0, targets, row_nll.double())
    B.index_add_(0, targets, col_nll.double())


def apply_allocation(table: LightRNNTable, row_of, col_of) -> None:
    """Move tokens to new cells in place (buffers keep their identity: a compiled model keeps working)."""
    table.row_of.copy_(torch.as_tensor(row_of))
    table.col_of.copy_(torch.as_tensor(col_of))
    occupied = torch.zeros_like(table.occupied)
    occupied[table.row_of, table.col_of] = True
    table.occupied.copy_(occupied)


@torch.no_grad()
def measure_and_reallocate(model: "LightRNNGPT", batches, autocast, rounds: int = 3):
    """Placement losses of every token over `batches` (this rank's share; summed across ranks),
    then reallocate() and move the tokens. Returns (total cost before, after, tokens moved)."""
    from kit.core.hw import all_reduce_sum

    table, device = model.head.table, table_device(model)
    A = torch.zeros(table.vocab_size, table.rows, dtype=torch.float64, device=device)
    B = torch.zeros(table.vocab_size, table.cols, dtype=torch.float64, device=device)
    was_training = model.training
    model.eval()
    for x, y in batches:
        x, y = x.to(device), y.to(device)
        with autocast():
            h = model.hidden(x)
        placement_losses(model.head, h, y, A, B)
    model.train(was_training)
    all_reduce_sum(A), all_reduce_sum(B)
    # copies: on CPU .numpy() shares the buffers that apply_allocation overwrites
    old_rows, old_cols = table.row_of.cpu().numpy().copy(), table.col_of.cpu().numpy().copy()
    rows, cols, before, after = reallocate(old_rows, old_cols, A.cpu().numpy(), B.cpu().numpy(), rounds)
    apply_allocation(table, rows, cols)
    return before, after, int(((rows != old_rows) | (cols != old_cols)).sum())


def table_device(model) -> torch.device:
    return model.head.table.row_of.device
