"""The baseline with a chunked cross-entropy (kit/modeling/losses.py): the output layer's loss and
gradients are computed --ce-chunk rows at a time, so the full N x 50257 fp32 logits are never
held. Same math as the baseline's loss; less memory, so the automatic micro-batch can grow.

    python train_gpt2_chunked_ce.py --data webmix --attn sdpa --compile 1
"""

import sys
from dataclasses import dataclass, field

from kit.modeling.losses import chunked_linear_cross_entropy
from kit.modeling.model import GPT, gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    ce_chunk: int = field(default=8192, metadata={"help": "rows (tokens) of logits computed at a time"})


class ChunkedLossGPT(GPT):
    def __init__(self, config, ce_chunk: int):
        super().__init__(config)
        self.ce_chunk = ce_chunk

    def loss(self, h, targets, idx=None):
        return chunked_linear_cross_entropy(h, self.lm_head.weight, targets, self.ce_chunk)


def build_model(cfg: Hyperparameters):
    return ChunkedLossGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), cfg.ce_chunk)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
