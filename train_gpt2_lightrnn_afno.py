"""LightRNN + causal Fourier (AFNO-style) token mixing, and the hybrid attention/Fourier stack.

Attention stays in the first --hybrid-attn-layers layers; the layers above mix tokens with
kit/afno.py's causal Fourier mixer (block-diagonal per-token MLP, soft-thresholded FFT long
convolution padded to 2T). --hybrid-attn-layers 0 is the pure Fourier model. Embedding and
output are LightRNN's (kit/lightrnn.py), as in the user's original, re-allocation
(--realloc-every) included.

    python train_gpt2_lightrnn_afno.py --data webmix                        # hybrid: 4 attention layers of 12
    python train_gpt2_lightrnn_afno.py --data webmix --hybrid-attn-layers 0 # Fourier mixing only
"""

import sys
from dataclasses import dataclass, field
from typing import ClassVar

from kit import datasets
from kit.afno import fourier_mixer
from kit.errors import UserError
from kit.heads import unigram_counts
from kit.lightrnn import LightRNNGPT
from kit.model import gpt_config
from kit.train import Recipe, main

import train_gpt2 as baseline  # the baseline's optimizer, shared
import train_gpt2_lightrnn as lightrnn  # LightRNN's flags and re-allocation hook, shared


@dataclass
class Hyperparameters(lightrnn.Hyperparameters):
    MODEL_SIZE_PRESETS: ClassVar[dict] = {"tiny": {"hybrid_attn_layers": 1}}  # one of the tiny model's two layers
    hybrid_attn_layers: int = field(default=4, metadata={"help": "layers (from the bottom) that keep attention; the rest use the Fourier mixer"})
    fourier_blocks: int = field(default=8, metadata={"help": "channel blocks of the Fourier mixer's block-diagonal MLP"})


def build_model(cfg: Hyperparameters):
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    if not 0 <= cfg.hybrid_attn_layers <= config.n_layer:
        raise UserError(f"--hybrid-attn-layers {cfg.hybrid_attn_layers}: between 0 and the model's {config.n_layer} layers")
    if config.n_embd % cfg.fourier_blocks:
        raise UserError(f"--fourier-blocks {cfg.fourier_blocks} must divide the width {config.n_embd}")
    counts = unigram_counts(datasets.resolve(cfg, is_main=False).train, 50257)
    model = LightRNNGPT(config, counts)
    for block in model.h[cfg.hybrid_attn_layers:]:
        block.attn = fourier_mixer(config, n_blocks=cfg.fourier_blocks)
        block.attn.apply(model._init_weights)
    return model


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=lightrnn.before_step)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
