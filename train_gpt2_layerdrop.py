"""The baseline with LayerDrop / stochastic depth: while training, block l (of L) is skipped with
probability p_l = --layerdrop x (l + 1) / L (deeper blocks more often), and a kept block's
residual update is scaled by 1 / (1 - p_l) so its expected contribution equals the full model's.
From --layerdrop-until x max-steps on, and always in evaluation, every block runs.

Skipping a block skips its compute: at --layerdrop 0.1 on 12 layers the expected depth is
11.35, ~5% less work per step while it lasts. With --compile 1 the blocks and the loss are
compiled one by one (kit.modeling.model.compile_regions), so skipping stays a plain Python branch between
compiled blocks. The rescaling happens inside each block (its scale is a tensor argument, 1 once
LayerDrop ends), so it is fused into the block's compiled graph: outside it, three full-size
elementwise passes per block would run eagerly, forward and backward.

    python train_gpt2_layerdrop.py --data webmix --attn sdpa --compile 1
"""

import sys
from dataclasses import dataclass, field

import torch

from kit.modeling.model import GPT, Block, compile_regions, gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    layerdrop: float = field(default=0.1, metadata={"help": "drop probability of the last block; block l gets this x (l+1)/L"})
    layerdrop_until: float = field(default=0.75, metadata={"help": "share of the run with LayerDrop; full depth afterwards"})


class ScaledBlock(Block):
    """The baseline's block, its residual update optionally scaled: x + scale * (block(x) - x),
    computed from the block's own output so the residual stream keeps its precision (the update
    is the difference of two fp32 streams, not a sum of two bf16 branch outputs)."""

    def forward(self, x, scale=None):
        out = super().forward(x)
        return out if scale is None else x + scale * (out - x)


class LayerDropGPT(GPT):
    def __init__(self, config, layerdrop: float, seed: int):
        super().__init__(config, block=ScaledBlock)
        if not 0 <= layerdrop < 1:
            raise ValueError("--layerdrop must be in [0, 1)")
        self.drop_probs = [layerdrop * (i + 1) / config.n_layer for i in range(config.n_layer)]
        self.dropping = layerdrop > 0
        self.generator = torch.Generator().manual_seed(seed)  # same draws on every rank: DDP ranks skip the same blocks
        # each kept block's scale as its own 0-dim tensor (a float argument would be a constant in each compiled
        # graph, and views into one tensor would differ in storage offset); not saved
        for block, p in zip(self.h, self.drop_probs):
            block.register_buffer("kept_scale", torch.tensor(1 / (1 - p)), persistent=False)
        self.register_buffer("unit_scale", torch.ones(()), persistent=False)

    def dropped_blocks(self) -> set:
        draws = torch.rand(len(self.drop_probs), generator=self.generator).tolist()
        return {i for i, (u, p) in enumerate(zip(draws, self.drop_probs)) if u < p}

    def hidden(self, idx):
        if not self.training:
            return super().hidden(idx)
        # training always takes this path, scale 1 once LayerDrop ends: one training graph per block for the whole run
        dropped = self.dropped_blocks() if self.dropping else set()
        x = self.embed(idx)
        for i, block in enumerate(self.h):
            if i not in dropped:
                x = block(x, block.kept_scale if self.dropping else self.unit_scale)
        return self.ln_f(x)


def build_model(cfg: Hyperparameters):
    return LayerDropGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), cfg.layerdrop, cfg.seed)


def layerdrop_active(step: int, cfg: Hyperparameters) -> bool:
    return cfg.layerdrop > 0 and step < cfg.layerdrop_until * cfg.max_steps


def before_step(step: int, model: LayerDropGPT, optimizers, cfg: Hyperparameters) -> None:
    model.dropping = layerdrop_active(step, cfg)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=before_step, compile_model=compile_regions, ddp_find_unused=True)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
