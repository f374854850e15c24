"""The baseline with each residual add fused with the LayerNorm after it: one compiled kernel
computes x + y and LayerNorm(x + y), forward and backward, in an otherwise eager model. Same
parameters and function as the baseline; the fused-ops idea measured on its own (compare with
the eager baseline: --compile 1 compiles the whole model, which fuses these anyway). Eagerly an
add and a norm are three passes over the activations (the add, the norm's statistics, its
output); Inductor writes one kernel per direction.

    python train_gpt2_fused_norm.py --data webmix --attn sdpa
"""

import sys
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from kit.modeling.model import GPT, gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


def add_layer_norm(x, y, norm: nn.LayerNorm):
    """(x + y, norm(x + y))."""
    total = x + y
    return total, F.layer_norm(total, norm.normalized_shape, norm.weight, norm.bias, norm.eps)


compiled_add_layer_norm = torch.compile(add_layer_norm)


class FusedNormGPT(GPT):
    """The baseline GPT whose every residual add is fused with the LayerNorm that reads it: after
    attention with the block's ln_2, after the MLP with the next block's ln_1 (or ln_f). Same
    parameters, same function as GPT."""

    def __init__(self, config, compiled: bool = True):
        super().__init__(config)
        self.add_norm = compiled_add_layer_norm if compiled else add_layer_norm

    def hidden(self, idx):
        x = self.embed(idx)
        normed = self.h[0].ln_1(x)
        following = [block.ln_1 for block in self.h[1:]] + [self.ln_f]
        for block, next_norm in zip(self.h, following):
            x, normed = self.add_norm(x, block.attn(normed), block.ln_2)
            x, normed = self.add_norm(x, block.mlp(normed), next_norm)
        return normed



@dataclass
class Hyperparameters(baseline.Hyperparameters):
    fused_norm_compiled: bool = field(default=True, metadata={"help": "compile the add + LayerNorm (0: the same function, eager, for reference)"})


def build_model(cfg: Hyperparameters):
    return FusedNormGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), compiled=cfg.fused_norm_compiled)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
