"""LightRNN on the baseline: factorised input embedding and output distribution (kit/lightrnn.py).

Tokens sit in a 225 x 224 table by training frequency; a token's embedding joins its row and
column vectors; P(w | h) = P(row | h) * P(column | h, row). The validation loss is the exact
negative log-likelihood of this distribution, comparable with the baseline's.

    python train_gpt2_lightrnn.py --data webmix
"""

import sys
from dataclasses import dataclass

from kit import datasets
from kit.heads import unigram_counts
from kit.lightrnn import LightRNNGPT
from kit.model import gpt_config
from kit.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    pass


def build_model(cfg: Hyperparameters):
    counts = unigram_counts(datasets.resolve(cfg, is_main=False).train, 50257)  # the table is filled by frequency
    return LightRNNGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), counts)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
