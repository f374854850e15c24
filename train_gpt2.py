"""Baseline GPT-2 (124M) on FineWeb: the reference loop every variant script is diffed against.

The benchmark's baseline: GPT-2 small with learned positions, LayerNorm, GELU MLP, tied
embeddings and no dropout; hand-rolled causal attention; AdamW at 6e-4 with 700 warmup steps
and a cosine to 10% over 4768 steps of 524,288 tokens; stop at validation loss <= 3.3821.

    python train_gpt2.py                                  # the full baseline (downloads FineWeb)
    python train_gpt2.py --data webmix --max-steps 333    # one pass over the webmix proxy
    python train_gpt2.py --model-size tiny --data synthetic --device cpu --max-steps 20
    torchrun --standalone --nproc_per_node=2 train_gpt2.py
"""

import sys
from dataclasses import dataclass

from kit.core.config import TrainConfig
from kit.modeling.model import GPT, gpt_config
from kit.modeling.optim import adamw
from kit.loop.train import Recipe, main


@dataclass
class Hyperparameters(TrainConfig):
    attn: str = "manual"
    lr: float = 6e-4
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.1
    warmup_steps: int = 700
    max_steps: int = 4768


def build_model(cfg: Hyperparameters):
    return GPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn))


def build_optimizers(model, cfg: Hyperparameters):
    return [adamw(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay, fused=cfg.fused_adamw)]


RECIPE = Recipe(Hyperparameters, build_model, build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
