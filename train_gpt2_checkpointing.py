"""The baseline with gradient checkpointing: the first --checkpoint-layers blocks keep only their
inputs in the forward pass and recompute the rest in the backward pass.

The math is unchanged (same gradients); each checkpointed block costs about one more forward
pass (~+33% per block of compute) and frees its activations, so a larger micro-batch, or a
longer --seq-len, fits the same memory. The automatic micro-batch choice (--micro-batch 0)
picks up the freed memory by itself.

    python train_gpt2_checkpointing.py --data webmix                       # every block checkpointed
    python train_gpt2_checkpointing.py --data webmix --seq-len 2048 --memory-cap-gib 22.5
"""

import sys
from dataclasses import dataclass, field

from kit.model import GPT, gpt_config
from kit.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    checkpoint_layers: int = field(default=-1, metadata={"help": "blocks to checkpoint, counted from the first; -1: all"})


def build_model(cfg: Hyperparameters):
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    config.checkpoint_layers = config.n_layer if cfg.checkpoint_layers < 0 else cfg.checkpoint_layers
    return GPT(config)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
