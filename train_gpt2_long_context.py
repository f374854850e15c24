"""The baseline at long context: attention within documents (token 50256 starts one), optionally
within a sliding window, with positions counted from each document's start.

Longer --seq-len packs more documents into one sequence; without masking, tokens would attend
across unrelated documents and learned positions would have to cover the whole packed length.
Here each token attends only to earlier tokens of its own document (and, with --window N, only
to the last ~N tokens, in blocks of 128), and its learned position is its offset in the
document (capped at --max-position - 1), so the position table does not grow with --seq-len.
The global batch in tokens (--batch-tokens) stays the baseline's at every length: longer
sequences mean fewer of them per step. Attention: FlexAttention with a block-sparse mask on
CUDA (fully masked blocks skipped), the same rule as a dense mask on the CPU.

    python scripts/sweep.py train_gpt2_long_context.py --grid seq-len=1024,2048,4096,8192,16384 --out logs/ctx -- --data webmix --max-steps 100
    python train_gpt2_long_context.py --data webmix --seq-len 4096 --window 1024
"""

import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from kit.core.errors import UserError
from kit.modeling.model import GPT, Block, CausalSelfAttention, gpt_config
from kit.modeling.modern import BLOCK, EOT, dense_mask, document_ids, flex_block_mask, flex_attention_fn
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    attn: str = field(default="auto", metadata={"choices": ["auto", "flex", "dense"], "help": "auto: flex on CUDA, the dense reference on CPU"})
    window: int = field(default=0, metadata={"help": "attend to at most about this many previous tokens (a multiple of 128); 0: the whole document"})
    max_position: int = field(default=1024, metadata={"help": "learned positions (offsets within a document) up to this"})


class DocumentAttention(CausalSelfAttention):
    def forward(self, x, mask):
        q, k, v = self.heads(x)
        if isinstance(mask, torch.Tensor):  # the dense reference
            y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        else:
            y = flex_attention_fn(q)(q, k, v, block_mask=mask)
        return self.merge(y)


class DocumentBlock(Block):
    def __init__(self, config):
        super().__init__(config, attention=DocumentAttention)

    def forward(self, x, mask):
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.mlp(self.ln_2(x))


def document_positions(idx):
    """Each token's offset from the start of its document (the first token of a sequence counts as a start)."""
    T = idx.size(1)
    pos = torch.arange(T, device=idx.device).expand_as(idx)
    starts = torch.where(idx == EOT, pos, torch.zeros_like(pos))
    return pos - torch.cummax(starts, dim=1).values


class LongContextGPT(GPT):
    def __init__(self, config, attn: str, window_blocks: int, max_position: int):
        config.block_size = max_position  # the position table: offsets within a document
        super().__init__(config, block=DocumentBlock)
        self.attn, self.window_blocks = attn, window_blocks
        self.config.attn = attn  # what the run log names as the attention path

    def flops_per_token(self, seq_len: int) -> int:
        """kit.modeling.flops' count with attention over the baseline's 1024 tokens (or the window, if
        shorter), not the packed length: documents are what a token attends to, and the work it
        does at any --seq-len is about the same, so MFU compares across lengths."""
        from kit.modeling.flops import flops_per_token

        span = min(seq_len, 1024, self.window_blocks * BLOCK or 1024)
        return flops_per_token(self, self.config.n_layer, self.config.n_embd, span)

    @torch.compiler.disable
    def mask(self, idx):
        docs = document_ids(idx)
        window = torch.tensor(self.window_blocks or idx.size(1) // BLOCK + 1, device=idx.device)
        return flex_block_mask(docs, window) if self.attn == "flex" else dense_mask(docs, window)

    def hidden(self, idx):
        mask = self.mask(idx)
        x = self.embed(idx, document_positions(idx).clamp(max=self.config.block_size - 1))
        for block in self.h:
            x = block(x, mask)
        return self.ln_f(x)


def build_model(cfg: Hyperparameters):
    if cfg.seq_len % BLOCK or cfg.window % BLOCK:
        raise UserError(f"--seq-len {cfg.seq_len} and --window {cfg.window}: the masks work in blocks of {BLOCK} tokens; use multiples of {BLOCK}")
    attn = cfg.attn if cfg.attn != "auto" else ("flex" if torch.cuda.is_available() and cfg.device != "cpu" else "dense")
    return LongContextGPT(gpt_config(cfg.model_size, attn="manual"), attn, cfg.window // BLOCK, cfg.max_position)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
