"""Output heads that avoid a full softmax over the vocabulary while training.

- AdaptiveSoftmaxHead: tokens ranked by training-set frequency; frequent ones get a full-width
  head, rarer clusters smaller projections (Grave et al., 2017, torch.nn.AdaptiveLogSoftmaxWithLoss).
  It is a proper distribution over the whole vocabulary, so its validation loss is exact. Runs in fp32.
- SampledSoftmaxHead: while training, the true token against K negatives drawn from the unigram
  distribution (raised to `power`), logits corrected by -log(K q(w)) (sampled softmax, a close
  relative of NCE); in evaluation the full softmax of the tied output layer, so validation is exact.

Both need unigram counts of the training data: `unigram_counts` computes them once per set of
shards and caches them beside the first shard's folder.
"""

import hashlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.data.shards import open_shard


def unigram_counts(files, vocab_size: int, cache_dir=None) -> np.ndarray:
    """Token counts over the given shards (cached as .npy, keyed by the file names and sizes)."""
    files = [Path(f) for f in files]
    key = hashlib.sha256("|".join(f"{f.resolve()}:{f.stat().st_size}" for f in files).encode()).hexdigest()[:16]
    cache = Path(cache_dir or files[0].parent) / f"unigram_{key}.npy"
    if cache.exists():
        return np.load(cache)
    counts = np.zeros(vocab_size, dtype=np.int64)
    for f in files:
        counts += np.bincount(open_shard(f), minlength=vocab_size)[:vocab_size]
    tmp = cache.with_name(cache.name + ".tmp.npy")
    np.save(tmp, counts)
    tmp.replace(cache)
    return counts


class AdaptiveSoftmaxHead(nn.Module):
    def __init__(self, width: int, counts: np.ndarray, cutoffs=(4000, 20000), div_value: float = 4.0):
        super().__init__()
        vocab = len(counts)
        order = np.argsort(-counts, kind="stable")  # most frequent first
        rank = np.empty(vocab, dtype=np.int64)
        rank[order] = np.arange(vocab)
        self.register_buffer("rank_of", torch.from_numpy(rank), persistent=True)
        self.register_buffer("token_of", torch.from_numpy(order.astype(np.int64)), persistent=True)
        self.softmax = nn.AdaptiveLogSoftmaxWithLoss(width, vocab, list(cutoffs), div_value=div_value)

    def forward(self, h, targets):
        """Mean negative log-likelihood of targets (token ids)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            return self.softmax(h.reshape(-1, h.size(-1)).float(), self.rank_of[targets.reshape(-1)]).loss

    def log_probs(self, h):
        """Log-probabilities over token ids (last dimension = vocabulary)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            by_rank = self.softmax.log_prob(h.reshape(-1, h.size(-1)).float())
        return by_rank[:, self.rank_of].view(*h.shape[:-1], -1)


class SampledSoftmaxHead(nn.Module):
    """Training: sampled softmax against unigram negatives; evaluation: the full softmax."""

    def __init__(self, output_layer: nn.Linear, counts: np.ndarray, num_negatives: int = 8192, power: float = 0.75):
        super().__init__()
        self.output = output_layer  # (tied) vocabulary x width
        noise = torch.from_numpy(counts.astype(np.float64) + 1.0) ** power
        self.register_buffer("noise", (noise / noise.sum()).float(), persistent=False)
        self.num_negatives = num_negatives

    def full_logits(self, h):
        return self.output(h).float()

    def sampled_loss(self, h, targets, negatives):
        """Cross-entropy of the true token against `negatives` (shared by all positions), with
        logits corrected by -log(K q(w)); negatives equal to a position's target are masked."""
        h, targets = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        weight = self.output.weight
        true_logit = (h * weight[targets]).sum(-1, keepdim=True).float()
        neg_logits = (h @ weight[negatives].t()).float()
        log_kq = torch.log(self.num_negatives * self.noise)
        true_logit = true_logit - log_kq[targets].unsqueeze(-1)
        neg_logits = neg_logits - log_kq[negatives].unsqueeze(0)
        neg_logits = neg_logits.masked_fill(negatives.unsqueeze(0) == targets.unsqueeze(-1), float("-inf"))
        logits = torch.cat([true_logit, neg_logits], dim=-1)
        return F.cross_entropy(logits, torch.zeros_like(targets))

    def forward(self, h, targets):
        if not self.training:
            logits = self.full_logits(h)
            return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        negatives = torch.multinomial(self.noise, self.num_negatives, replacement=True)
        return self.sampled_loss(h, targets, negatives)
