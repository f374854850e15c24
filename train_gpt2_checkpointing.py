"""The baseline with gradient checkpointing: the first --checkpoint-layers blocks keep only their
inputs in the forward pass and recompute the rest in the backward pass.

The math is unchanged (same gradients); each checkpointed block costs about one more forward
pass (~+33% per block of compute) and frees its activations, so a larger micro-batch, or a
longer --seq-len, fits the same memory. The automatic micro-batch choice (--micro-batch 0)
picks up the freed memory by itself. The output layer's logits sit outside the blocks: under a
24 GB cap they, not the blocks, bound the micro-batch, so --ce-chunk N adds the chunked loss of
train_gpt2_chunked_ce.py (the full logits never held).

    python train_gpt2_checkpointing.py --data webmix                       # every block checkpointed
    python train_gpt2_checkpointing.py --data webmix --seq-len 2048 --memory-cap-gib 22.5
    python train_gpt2_checkpointing.py --data webmix --memory-cap-gib 22.5 --ce-chunk 8192
"""

import sys
from dataclasses import dataclass, field

import torch
import torch.utils.checkpoint

from kit.modeling.model import GPT, gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared
from train_gpt2_chunked_ce import ChunkedLossGPT


class CheckpointedBlocks:
    """For a GPT class: the first `checkpoint_layers` blocks keep only their input while training and
    recompute their activations in the backward pass (evaluation, without gradients, runs them plainly)."""

    checkpoint_layers = 0

    def hidden(self, idx):
        x = self.embed(idx)
        for i, block in enumerate(self.h):
            if i < self.checkpoint_layers and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.ln_f(x)


class CheckpointedGPT(CheckpointedBlocks, GPT):
    pass


class CheckpointedChunkedLossGPT(CheckpointedBlocks, ChunkedLossGPT):
    pass


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    checkpoint_layers: int = field(default=-1, metadata={"help": "blocks to checkpoint, counted from the first; -1: all"})
    ce_chunk: int = field(default=0, metadata={"help": "with N > 0, the loss computed N tokens' logits at a time (train_gpt2_chunked_ce.py's); 0: the baseline's"})


def build_model(cfg: Hyperparameters):
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    model = CheckpointedChunkedLossGPT(config, cfg.ce_chunk) if cfg.ce_chunk > 0 else CheckpointedGPT(config)
    model.checkpoint_layers = config.n_layer if cfg.checkpoint_layers < 0 else cfg.checkpoint_layers
    return model


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
