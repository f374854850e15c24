"""LightRNN + CoCoNT n-gram smoothing of the row softmax + multi-token prediction.

The row target while training is (1 - eps) one-hot + eps P_bigram(row | previous token), from
bigram counts of the training shards (cached); extra heads predict tokens t+2 .. t+k with a weight
that falls to 0 over --mtp-frac of the run. Validation is the plain next-token loss.

    python train_gpt2_lightrnn_cocont_mtp.py --data webmix --cocont-eps 0.1 --mtp-k 2
"""

import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.data import datasets
from kit.core.errors import UserError
from kit.ideas.heads import unigram_counts
from kit.ideas.lightrnn import LightRNNGPT, frequency_allocation, grid_shape
from kit.modeling.model import gpt_config
from kit.modeling.optim import linear_to_zero
from kit.data.shards import open_shard
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


# ----- the smoothed row target and the extra heads
# CoCoNT-style n-gram target smoothing for LightRNN's row softmax, and multi-token prediction.
#
# Smoothing: the row softmax's training target is
#     (1 - eps) * one_hot(true row) + eps * P_bigram(row | previous token),
# where P_bigram counts, over the training shards, which row the next token falls in after each
# token (add-alpha smoothed; computed once and cached). With eps = 0 it is plain cross-entropy.
# Evaluation always uses the plain likelihood.
#
# Multi-token prediction: extra heads predict tokens t+2 .. t+k from the trunk's state at t through
# a residual adapter per offset and the shared LightRNN output; their losses are added with a weight
# the script schedules.


def row_bigram_counts(files, row_of: np.ndarray, rows: int, cache_dir=None) -> np.ndarray:
    """(V, rows) counts of 'token a is followed by a token in row r' over the shards (cached)."""
    files = [Path(f) for f in files]
    vocab = len(row_of)
    key = hashlib.sha256(("|".join(f"{f.resolve()}:{f.stat().st_size}" for f in files) + hashlib.sha256(row_of.tobytes()).hexdigest()).encode()).hexdigest()[:16]
    cache = Path(cache_dir or files[0].parent) / f"row_bigrams_{key}.npy"
    if cache.exists():
        return np.load(cache)
    counts = np.zeros(vocab * rows, dtype=np.int64)
    for f in files:
        tokens = np.asarray(open_shard(f), dtype=np.int64)
        counts += np.bincount(tokens[:-1] * rows + row_of[tokens[1:]], minlength=vocab * rows)
    counts = counts.reshape(vocab, rows).astype(np.float32)
    tmp = cache.with_name(cache.name + ".tmp.npy")
    np.save(tmp, counts)
    tmp.replace(cache)
    return counts


def bigram_row_distribution(counts: np.ndarray, alpha: float = 0.1) -> torch.Tensor:
    smoothed = torch.from_numpy(counts).float() + alpha
    return smoothed / smoothed.sum(-1, keepdim=True)


def smoothed_targets(true_rows, previous, p_bigram, eps: float):
    one_hot = F.one_hot(true_rows, p_bigram.size(-1)).float()
    return (1 - eps) * one_hot + eps * p_bigram[previous]


def smoothed_row_loss(row_logits, true_rows, previous, p_bigram, eps: float):
    """Cross-entropy of the row softmax against the smoothed targets (mean over positions)."""
    target = smoothed_targets(true_rows, previous, p_bigram, eps)
    return -(target * F.log_softmax(row_logits.float(), -1)).sum(-1).mean()


class LightRNNCoCoNTGPT(LightRNNGPT):
    def __init__(self, config, counts: np.ndarray, bigram_counts=None, eps: float = 0.1, mtp_k: int = 1, block=None):
        kwargs = {"block": block} if block else {}
        super().__init__(config, counts, **kwargs)
        self.eps = eps
        self.register_buffer("p_bigram", bigram_row_distribution(bigram_counts) if bigram_counts is not None else None, persistent=False)
        extra = max(0, mtp_k - 1)  # mtp_k = 2: one extra head, for token t+2
        self.mtp_adapters = nn.ModuleList(nn.Linear(config.n_embd, config.n_embd, bias=False) for _ in range(extra))
        for adapter in self.mtp_adapters:
            nn.init.zeros_(adapter.weight)
        self.register_buffer("mtp_weight", torch.tensor(0.0), persistent=False)

    def next_token_loss(self, h, targets, idx):
        """-log P(row) (smoothed target while training) - log P(column | row)."""
        head = self.head
        flat_h, flat_t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        rows, cols = head.table.row_of[flat_t], head.table.col_of[flat_t]
        row_logits = head.row_out(flat_h)
        if self.training and self.eps > 0 and self.p_bigram is not None:
            row_loss = smoothed_row_loss(row_logits, rows, idx.reshape(-1), self.p_bigram, self.eps)
        else:
            row_loss = -F.log_softmax(row_logits.float(), -1).gather(-1, rows[:, None]).mean()
        col_logits = head.col_out(flat_h).float() + head.column_offsets()[rows].float()
        return row_loss - F.log_softmax(col_logits, -1).gather(-1, cols[:, None]).mean()

    def loss(self, h, targets, idx=None):
        loss = self.next_token_loss(h, targets, idx)
        if self.training:
            for k, adapter in enumerate(self.mtp_adapters, start=1):  # state at t predicts token t+1+k
                shifted = h[:, :-k] + adapter(h[:, :-k])
                loss = loss + self.mtp_weight * self.head.loss(shifted, targets[:, k:])
        return loss


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    cocont_eps: float = field(default=0.1, metadata={"help": "weight of the bigram row distribution in the row target (0: plain)"})
    mtp_k: int = field(default=2, metadata={"help": "predict tokens t+1 .. t+k (1: no extra heads; at most 4)"})
    mtp_weight: float = field(default=0.3, metadata={"help": "weight of each extra head's loss at step 0"})
    mtp_frac: float = field(default=1.0, metadata={"help": "share of the run over which the MTP weight falls to 0"})


def build_model(cfg: Hyperparameters):
    if not 1 <= cfg.mtp_k <= 4:
        raise UserError(f"--mtp-k {cfg.mtp_k}: between 1 and 4")
    train_files = datasets.resolve(cfg, is_main=False).train
    counts = unigram_counts(train_files, 50257)
    rows, cols = grid_shape(50257)
    row_of, _ = frequency_allocation(counts, rows, cols)  # the same allocation the model builds
    bigrams = row_bigram_counts(train_files, row_of, rows) if cfg.cocont_eps > 0 else None
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    return LightRNNCoCoNTGPT(config, counts, bigrams, eps=cfg.cocont_eps, mtp_k=cfg.mtp_k)


def before_step(step: int, model, optimizers, cfg: Hyperparameters) -> None:
    model.mtp_weight.fill_(linear_to_zero(step, cfg.max_steps, cfg.mtp_weight, cfg.mtp_frac))


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0], before_step=before_step)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
