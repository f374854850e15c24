"""LightRNN + CoCoNT n-gram smoothing of the row softmax + multi-token prediction (kit/cocont.py).

The row target while training is (1 - eps) one-hot + eps P_bigram(row | previous token), from
bigram counts of the training shards (cached); extra heads predict tokens t+2 .. t+k with a weight
that falls to 0 over --mtp-frac of the run. Validation is the plain next-token loss.

    python train_gpt2_lightrnn_cocont_mtp.py --data webmix --cocont-eps 0.1 --mtp-k 2
"""

import sys
from dataclasses import dataclass, field

from kit import datasets
from kit.cocont import LightRNNCoCoNTGPT, row_bigram_counts
from kit.errors import UserError
from kit.heads import unigram_counts
from kit.lightrnn import frequency_allocation, grid_shape
from kit.model import gpt_config
from kit.optim import linear_to_zero
from kit.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


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
