"""LightRNN on the baseline: factorised input embedding and output distribution (kit/ideas/lightrnn.py).

Tokens sit in a 225 x 224 table by training frequency; a token's embedding joins its row and
column vectors; P(w | h) = P(row | h) * P(column | h, row). The validation loss is the exact
negative log-likelihood of this distribution, comparable with the baseline's. With
--realloc-every N, every N steps the tokens move to cells where the current model gives them a
lower loss (measured on the first --realloc-tokens training tokens; kit.ideas.lightrnn.reallocate).

    python train_gpt2_lightrnn.py --data webmix
    python train_gpt2_lightrnn.py --data webmix --realloc-every 1000
"""

import sys
import time
from dataclasses import dataclass, field

from kit.data import datasets
from kit.core import hw
from kit.ideas.heads import unigram_counts
from kit.ideas.lightrnn import LightRNNGPT, measure_and_reallocate
from kit.data.loader import validation_batches
from kit.modeling.model import gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    realloc_every: int = field(default=0, metadata={"help": "move tokens to lower-loss cells every N steps (0: keep the frequency allocation)"})
    realloc_tokens: int = field(default=2_097_152, metadata={"help": "training tokens the re-allocation measures losses on"})
    realloc_rounds: int = field(default=3, metadata={"help": "alternations of rows-within-columns and columns-within-rows"})


def build_model(cfg: Hyperparameters):
    counts = unigram_counts(datasets.resolve(cfg, is_main=False).train, 50257)  # the table is filled by frequency
    return LightRNNGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), counts)


def realloc_due(step: int, cfg: Hyperparameters) -> bool:
    return cfg.realloc_every > 0 and 0 < step < cfg.max_steps and step % cfg.realloc_every == 0


def before_step(step: int, model: LightRNNGPT, optimizers, cfg: Hyperparameters) -> None:
    if not realloc_due(step, cfg):
        return
    ddp = hw.dist_from_env()
    first_shard = datasets.resolve(cfg, is_main=False).train[0]
    per_batch = max(1, 65_536 // cfg.seq_len)
    batches = validation_batches(first_shard, cfg.realloc_tokens, cfg.seq_len, per_batch, ddp.rank, ddp.world_size, strict=False)
    device = model.head.table.row_of.device
    dtype = hw.pick_dtype(cfg.dtype, device)
    t0 = time.perf_counter()
    before, after, moved = measure_and_reallocate(model, batches, lambda: hw.autocast(device, dtype), cfg.realloc_rounds)
    if ddp.rank == 0:
        print(f"re-allocation at step {step}: {moved} tokens moved, summed placement loss {before:.4g} -> {after:.4g} "
              f"({time.perf_counter() - t0:.1f} s, counted as training time)")


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=before_step)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
