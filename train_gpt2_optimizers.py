"""The baseline with another optimizer: Lion (kit/modeling/optim.py), 8-bit AdamW (bitsandbytes) or Muon.

Lion moves every weight by exactly lr per step (the sign of an interpolated momentum), so it
wants a smaller learning rate and a larger weight decay than AdamW: --lion-lr / --lion-weight-decay
(defaults 2e-4 and 0.3, a third of AdamW's lr and three times its decay, the paper's advice;
not tuned on this kit yet). 8-bit AdamW keeps Adam's two moments in 8 bits (block-wise
quantised), cutting optimizer memory by ~75%, with the baseline's --lr and --weight-decay;
it needs `pip install bitsandbytes` (0.50 runs on CUDA and on the CPU). Muon (kit/modeling/muon.py, the
record script's optimizer, for reference) orthogonalises the update of every weight matrix inside
the blocks (the fused QKV projection as three matrices) at --muon-lr; the embeddings, the tied
head, biases and LayerNorm gains stay on the baseline's AdamW. The warmup + cosine schedule is the baseline's.

    python train_gpt2_optimizers.py --data webmix --optimizer lion
    python train_gpt2_optimizers.py --data webmix --optimizer adamw8bit
    python train_gpt2_optimizers.py --data webmix --optimizer muon
"""

import sys
from dataclasses import dataclass, field

from kit.core.errors import UserError
from kit.modeling.muon import Muon
from kit.modeling.optim import Lion, adamw, decay_groups
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters, model and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    optimizer: str = field(default="lion", metadata={"choices": ["lion", "adamw8bit", "muon", "adamw"], "help": "adamw: the baseline's, for a same-script comparison"})
    lion_lr: float = 2e-4
    lion_weight_decay: float = 0.3
    lion_beta1: float = 0.9
    lion_beta2: float = 0.99
    muon_lr: float = field(default=0.05, metadata={"help": "Muon's peak learning rate (the record script's)"})
    muon_momentum: float = 0.95


def adamw8bit(model, cfg: Hyperparameters):
    try:
        import bitsandbytes as bnb
    except ImportError as error:  # not installed, or one of its own imports failed (say which)
        raise UserError(f"--optimizer adamw8bit needs bitsandbytes (pip install bitsandbytes): {error}") from None
    return bnb.optim.AdamW8bit(decay_groups(model, cfg.weight_decay, cfg.lr), lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)


def muon_and_adamw(model, cfg: Hyperparameters) -> list:
    """Muon for the blocks' weight matrices (QKV split in three), the baseline's AdamW for the rest."""
    qkv = [block.attn.c_attn.weight for block in model.h]
    qkv_ids = {id(p) for p in qkv}
    other_matrices = [p for p in model.h.parameters() if p.dim() == 2 and id(p) not in qkv_ids]
    muon = Muon([{"params": qkv, "split": 3}, {"params": other_matrices}], lr=cfg.muon_lr, momentum=cfg.muon_momentum, tall_scale=False)
    for group in muon.param_groups:
        group["base_lr"] = cfg.muon_lr
    adam = adamw(model, cfg.lr, (cfg.beta1, cfg.beta2), cfg.eps, cfg.weight_decay, fused=cfg.fused_adamw, exclude=[*qkv, *other_matrices])
    return [adam, muon]


def build_optimizers(model, cfg: Hyperparameters):
    if cfg.optimizer == "lion":
        return [Lion(decay_groups(model, cfg.lion_weight_decay, cfg.lion_lr), lr=cfg.lion_lr, betas=(cfg.lion_beta1, cfg.lion_beta2))]
    if cfg.optimizer == "adamw8bit":
        return [adamw8bit(model, cfg)]
    if cfg.optimizer == "muon":
        return muon_and_adamw(model, cfg)
    return baseline.build_optimizers(model, cfg)


RECIPE = Recipe(Hyperparameters, baseline.build_model, build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
