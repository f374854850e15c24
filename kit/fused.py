"""A residual add fused with the LayerNorm after it: (x + y, LayerNorm(x + y)) in one compiled
kernel, forward and backward, for a model that is otherwise run eagerly.

Eagerly this is three passes over the activations (add, then the norm's statistics and its
output); Inductor writes one kernel per direction. Compiling the whole model (--compile 1) makes
the same fusion and more, so this is the fused-ops idea measured on its own, against eager rows.
"""

import torch
import torch.nn.functional as F
from torch import nn

from kit.model import GPT


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
        if config.checkpoint_layers:
            raise ValueError("FusedNormGPT does not checkpoint blocks")
        self.add_norm = compiled_add_layer_norm if compiled else add_layer_norm

    def hidden(self, idx, token_keep=None):
        x = self.embed(idx, token_keep=token_keep)
        normed = self.h[0].ln_1(x)
        following = [block.ln_1 for block in self.h[1:]] + [self.ln_f]
        for block, next_norm in zip(self.h, following):
            x, normed = self.add_norm(x, block.attn(normed), block.ln_2)
            x, normed = self.add_norm(x, block.mlp(normed), next_norm)
        return normed
