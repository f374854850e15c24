"""LightRNN + causal Fourier (AFNO-style) token mixing, and the hybrid attention/Fourier stack.

Attention stays in the first --hybrid-attn-layers layers; the layers above mix tokens with the
causal Fourier mixer below (block-diagonal per-token MLP, soft-thresholded FFT long convolution
padded to 2T). --hybrid-attn-layers 0 is the pure Fourier model. Embedding and output are
LightRNN's (kit/ideas/lightrnn.py), re-allocation (--realloc-every) included.

    python train_gpt2_lightrnn_afno.py --data webmix                        # hybrid: 4 attention layers of 12
    python train_gpt2_lightrnn_afno.py --data webmix --hybrid-attn-layers 0 # Fourier mixing only
"""

import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.data import datasets
from kit.core.config import layer_count
from kit.core.errors import UserError
from kit.ideas.heads import unigram_counts
from kit.ideas.longconv import causal_fft_conv
from kit.ideas.lightrnn import LightRNNGPT
from kit.modeling.model import gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's optimizer, shared
import train_gpt2_lightrnn as lightrnn  # LightRNN's flags and re-allocation hook, shared


# ----- the causal Fourier mixer
# A causal token mixer in the spirit of AFNO (adaptive Fourier neural operators).
#
# AFNO mixes tokens by a non-linear MLP applied to the sequence's Fourier transform. That cannot
# be causal: any non-linear function of the spectrum makes every output depend on every input,
# future ones included. What survives causality is the linear part, a long convolution, done with
# FFTs (kit/ideas/longconv.py: both signals zero-padded to 2T, so the circular product is the linear
# convolution; without the padding the first outputs see the last inputs, which tests/test_afno.py
# shows the causality check catching).
#
# The mixer here: a per-token block-diagonal MLP (AFNO's block-diagonal weights, applied where
# they are causal: to each token), a depthwise causal FFT convolution over the sequence with a
# learned kernel, soft-thresholded (AFNO's sparsity, applied to the kernel, which keeps it
# causal), and a residual-friendly output projection.


class BlockDiagonalMLP(nn.Module):
    """Channels split into n_blocks groups, each with its own two-layer MLP (no mixing across groups)."""

    def __init__(self, width: int, n_blocks: int, hidden_factor: int = 1):
        super().__init__()
        if width % n_blocks:
            raise ValueError(f"width {width} is not a multiple of n_blocks {n_blocks}")
        size = width // n_blocks
        self.n_blocks = n_blocks
        self.w1 = nn.Parameter(torch.randn(n_blocks, size, size * hidden_factor) * size**-0.5)
        self.w2 = nn.Parameter(torch.randn(n_blocks, size * hidden_factor, size) * (size * hidden_factor) ** -0.5)

    def forward(self, x):
        B, T, C = x.shape
        blocks = x.view(B, T, self.n_blocks, C // self.n_blocks)
        h = F.gelu(torch.einsum("btns,nsh->btnh", blocks, self.w1))
        return torch.einsum("btnh,nhs->btns", h, self.w2).reshape(B, T, C)


class CausalFourierMixer(nn.Module):
    def __init__(self, width: int, max_len: int, n_blocks: int = 8, shrink: float = 0.01, causal_padding: bool = True):
        super().__init__()
        self.mlp = BlockDiagonalMLP(width, n_blocks)
        decay = torch.exp(-torch.arange(max_len, dtype=torch.float32) / 32.0)  # start near a short, recent-heavy filter
        self.kernel = nn.Parameter(0.1 * torch.randn(width, max_len) * decay)
        self.shrink = shrink
        self.causal_padding = causal_padding  # False only to demonstrate the leak a circular FFT causes
        self.proj = nn.Linear(width, width)
        self.proj.residual_projection = True

    def forward(self, x):
        T = x.size(1)
        kernel = F.softshrink(self.kernel[:, :T].float(), self.shrink)  # (C, T): weights for lags 0..T-1
        y = causal_fft_conv(self.mlp(x), kernel, padded=self.causal_padding)
        return self.proj(y.type_as(x))


def fourier_mixer(config, n_blocks: int = 8):
    """A CausalFourierMixer sized for a kit.modeling.model.GPTConfig: use as Block(config, attention=fourier_mixer)."""
    return CausalFourierMixer(config.n_embd, config.block_size, n_blocks=n_blocks)


@dataclass
class Hyperparameters(lightrnn.Hyperparameters):
    MODEL_SIZE_PRESETS: ClassVar[dict] = {"tiny": {"hybrid_attn_layers": 1}}  # one of the tiny model's two layers
    hybrid_attn_layers: int = field(default=4, metadata={"help": "layers (from the bottom) that keep attention; the rest use the Fourier mixer"})
    fourier_blocks: int = field(default=8, metadata={"help": "channel blocks of the Fourier mixer's block-diagonal MLP"})


def build_model(cfg: Hyperparameters):
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    layer_count("--hybrid-attn-layers", cfg.hybrid_attn_layers, config.n_layer)
    if config.n_embd % cfg.fourier_blocks:
        raise UserError(f"--fourier-blocks {cfg.fourier_blocks} must divide the width {config.n_embd}")
    counts = unigram_counts(datasets.resolve(cfg, is_main=False).train, 50257)
    model = LightRNNGPT(config, counts)
    model.replace_mixers(cfg.hybrid_attn_layers, lambda: fourier_mixer(config, n_blocks=cfg.fourier_blocks))
    return model


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=lightrnn.before_step)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
