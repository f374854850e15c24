"""Adaptive softmax and sampled softmax heads: distributions normalise, losses match direct sums."""

import math

import numpy as np
import torch

from conftest import make_shard
from kit.ideas.heads import AdaptiveSoftmaxHead, SampledSoftmaxHead, unigram_counts

VOCAB = 300


def counts():
    rng = np.random.default_rng(0)
    return rng.integers(0, 1000, size=VOCAB)


def test_unigram_counts_are_cached(tmp_path):
    tokens = make_shard(tmp_path / "a.bin", 5000)
    first = unigram_counts([tmp_path / "a.bin"], 50257)
    assert np.array_equal(first, np.bincount(tokens, minlength=50257))
    assert len(list(tmp_path.glob("unigram_*.npy"))) == 1
    assert np.array_equal(unigram_counts([tmp_path / "a.bin"], 50257), first)


def test_adaptive_softmax_is_a_distribution_and_its_loss_is_exact():
    torch.manual_seed(0)
    head = AdaptiveSoftmaxHead(16, counts(), cutoffs=(50, 150))
    assert sorted(head.rank_of.tolist()) == list(range(VOCAB))  # ranking is a bijection
    assert torch.equal(head.token_of[head.rank_of], torch.arange(VOCAB))
    h = torch.randn(2, 5, 16)
    targets = torch.randint(0, VOCAB, (2, 5))
    log_probs = head.log_probs(h)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 5), atol=1e-5, rtol=0)
    direct = -log_probs.gather(-1, targets.unsqueeze(-1)).mean()
    torch.testing.assert_close(head(h, targets), direct, atol=1e-5, rtol=1e-5)


def test_sampled_softmax_loss_by_hand():
    torch.manual_seed(0)
    output = torch.nn.Linear(8, VOCAB, bias=False)
    head = SampledSoftmaxHead(output, counts(), num_negatives=4)
    h = torch.randn(3, 8)
    targets = torch.tensor([5, 17, 42])
    negatives = torch.tensor([17, 100, 200, 5])
    loss = head.sampled_loss(h, targets, negatives)
    q = head.noise.double()
    W, hd = output.weight.detach().double(), h.double()
    expected = 0.0
    for i, t in enumerate(targets.tolist()):
        scores = [float(hd[i] @ W[t]) - math.log(4 * q[t])]
        for n in negatives.tolist():
            if n != t:  # an accidental hit of the target is left out
                scores.append(float(hd[i] @ W[n]) - math.log(4 * q[n]))
        expected += -(scores[0] - math.log(sum(math.exp(s) for s in scores)))
    assert abs(loss.item() - expected / 3) < 1e-5


def test_sampled_softmax_evaluates_the_full_softmax():
    torch.manual_seed(0)
    output = torch.nn.Linear(8, VOCAB, bias=False)
    head = SampledSoftmaxHead(output, counts(), num_negatives=16).eval()
    h, targets = torch.randn(2, 4, 8), torch.randint(0, VOCAB, (2, 4))
    log_probs = torch.log_softmax(head.full_logits(h), -1)
    torch.testing.assert_close(log_probs.exp().sum(-1), torch.ones(2, 4), atol=1e-5, rtol=0)
    torch.testing.assert_close(head(h, targets), -log_probs.gather(-1, targets.unsqueeze(-1)).mean(), atol=1e-5, rtol=1e-5)
    head.train()
    assert torch.isfinite(head(h, targets))
