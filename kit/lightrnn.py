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
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.model import GPT, Block


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
