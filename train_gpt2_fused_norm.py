"""The baseline with each residual add fused with the LayerNorm after it (kit/fused.py): one
compiled kernel computes x + y and LayerNorm(x + y), forward and backward, in an otherwise eager
model. Same parameters and function as the baseline; the fused-ops idea measured on its own
(compare with the eager baseline: --compile 1 compiles the whole model, which fuses these anyway).

    python train_gpt2_fused_norm.py --data webmix --attn sdpa
"""

import sys
from dataclasses import dataclass, field

from kit.fused import FusedNormGPT
from kit.model import gpt_config
from kit.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    fused_norm_compiled: bool = field(default=True, metadata={"help": "compile the add + LayerNorm (0: the same function, eager, for reference)"})


def build_model(cfg: Hyperparameters):
    return FusedNormGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), compiled=cfg.fused_norm_compiled)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
