"""The consumer-GPU recipe: the baseline made fast (bf16, SDPA, compile, fused AdamW), with a
smaller key/value cache (GQA or MLA) and cheaper output heads (adaptive softmax, sampled softmax).

    python train_gpt2_rtx4090_optim.py --data webmix                     # SDPA, compiled, fused AdamW
    python train_gpt2_rtx4090_optim.py --attn gqa --kv-heads 4           # 12 query heads share 4 key/value heads
    python train_gpt2_rtx4090_optim.py --attn mla --kv-latent 256        # keys/values from a 256-number latent + rotary key part
    python train_gpt2_rtx4090_optim.py --head adaptive                   # adaptive softmax over frequency-ranked tokens
    python train_gpt2_rtx4090_optim.py --head nce --negatives 8192       # sampled softmax against unigram noise

Validation is the exact next-token loss in every configuration (the adaptive softmax is a full
distribution; the sampled head evaluates the full softmax), so it compares with the baseline's.
"""

import functools
import sys
from dataclasses import dataclass, field
from typing import ClassVar

from kit.data import datasets
from kit.modeling.attention import GroupedQueryAttention, MultiLatentAttention
from kit.core.errors import UserError
from kit.ideas.heads import AdaptiveSoftmaxHead, SampledSoftmaxHead, unigram_counts
from kit.modeling.model import GPT, Block, gpt_config
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    attn: str = field(default="sdpa", metadata={"choices": ["manual", "sdpa", "flex", "gqa", "mla"], "help": "gqa / mla use SDPA kernels"})
    MODEL_SIZE_PRESETS: ClassVar[dict] = {"tiny": {"kv_heads": 1}}  # the tiny model has two heads
    kv_heads: int = field(default=4, metadata={"help": "key/value heads for --attn gqa (divides the head count)"})
    kv_latent: int = field(default=256, metadata={"help": "latent size for --attn mla"})
    rope_dim: int = field(default=32, metadata={"help": "rotary key part for --attn mla"})
    head: str = field(default="softmax", metadata={"choices": ["softmax", "adaptive", "nce"]})
    negatives: int = field(default=8192, metadata={"help": "noise samples per step for --head nce"})
    compile: bool = True
    fused_adamw: bool = True


class GPTWithHead(GPT):
    """The baseline GPT whose training loss comes from another output head."""

    def __init__(self, config, block, make_head):
        super().__init__(config, block=block)
        self.output_head = make_head(self)

    def loss(self, h, targets, idx=None):
        return self.output_head(h, targets)


def attention_for(cfg: Hyperparameters):
    if cfg.attn == "gqa":
        if cfg.kv_heads < 1 or gpt_config(cfg.model_size).n_head % cfg.kv_heads:
            raise UserError(f"--kv-heads {cfg.kv_heads} must divide the {gpt_config(cfg.model_size).n_head} heads of --model-size {cfg.model_size}")
        return functools.partial(GroupedQueryAttention, n_kv_head=cfg.kv_heads)
    if cfg.attn == "mla":
        return functools.partial(MultiLatentAttention, kv_latent=cfg.kv_latent, rope_dim=cfg.rope_dim)
    return None


def head_for(cfg: Hyperparameters):
    if cfg.head == "softmax":
        return None
    counts = unigram_counts(datasets.resolve(cfg, is_main=False).train, 50257)
    if cfg.head == "adaptive":
        return lambda model: AdaptiveSoftmaxHead(model.config.n_embd, counts)
    return lambda model: SampledSoftmaxHead(model.lm_head, counts, num_negatives=cfg.negatives)


def build_model(cfg: Hyperparameters):
    attention = attention_for(cfg)
    kernel = "sdpa" if attention else cfg.attn
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=kernel)
    block = functools.partial(Block, attention=attention) if attention else Block
    make_head = head_for(cfg)
    return GPTWithHead(config, block, make_head) if make_head else GPT(config, block=block)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
