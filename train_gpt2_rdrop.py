"""The baseline with R-Drop-style consistency under token dropout.

Each training batch runs twice (as one batch of twice the size): once as is, once with
--token-drop of the input tokens' embeddings zeroed (positions kept). The loss is the mean of
the two cross-entropies plus --rdrop-alpha x the symmetric KL divergence between the two
next-token distributions, averaged over positions: the model is pushed to predict the same
with and without a few context tokens. The baseline has no dropout, so token dropout in one
pass is the only source of difference between the passes. Cost: twice the forward and
backward work per step (the tokens/s it reports count each training token once).
Validation is the plain loss of one clean pass.

    python train_gpt2_rdrop.py --data webmix --attn sdpa --compile 1
"""

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from kit.modeling.model import GPT, gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    token_drop: float = field(default=0.15, metadata={"help": "share of input tokens whose embedding the second pass drops"})
    rdrop_alpha: float = field(default=1.0, metadata={"help": "weight of the symmetric KL term"})


def symmetric_kl(logits_a, logits_b):
    """(KL(p_a || p_b) + KL(p_b || p_a)) / 2 per position, averaged; fp32."""
    log_a, log_b = F.log_softmax(logits_a.float(), -1), F.log_softmax(logits_b.float(), -1)
    kl_ab = (log_a.exp() * (log_a - log_b)).sum(-1)
    kl_ba = (log_b.exp() * (log_b - log_a)).sum(-1)
    return ((kl_ab + kl_ba) / 2).mean()


class RDropGPT(GPT):
    def __init__(self, config, token_drop: float, alpha: float):
        super().__init__(config)
        self.token_drop, self.alpha = token_drop, alpha
        self.token_keep = None  # (B, T) during a training forward: 0 where a token's embedding is dropped

    def token_embeddings(self, idx):
        tokens = self.wte(idx)
        return tokens if self.token_keep is None else tokens * self.token_keep[..., None].to(tokens.dtype)  # positions stay

    def forward(self, idx, targets=None):
        if not (self.training and targets is not None):
            return super().forward(idx, targets)
        clean = torch.ones_like(idx, dtype=torch.float32)
        dropped = (torch.rand(idx.shape, device=idx.device) >= self.token_drop).float()
        self.token_keep = torch.cat([clean, dropped])
        try:
            h = self.hidden(torch.cat([idx, idx]))
        finally:
            self.token_keep = None
        logits = self.lm_head(h).float()
        logits_a, logits_b = logits.chunk(2)
        ce = F.cross_entropy(logits.reshape(-1, logits.size(-1)), torch.cat([targets, targets]).reshape(-1))  # mean of both passes
        return ce + self.alpha * symmetric_kl(logits_a, logits_b)


def build_model(cfg: Hyperparameters):
    return RDropGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), cfg.token_drop, cfg.rdrop_alpha)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
