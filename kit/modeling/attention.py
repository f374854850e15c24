"""Attention variants that shrink the key/value cache, as drop-in mixers for kit.modeling.model.Block.

- GroupedQueryAttention (GQA): n_head query heads share n_kv_head key/value heads, so the cache
  holds 2 x n_kv_head x head_dim numbers per token instead of 2 x n_head x head_dim.
- MultiLatentAttention (MLA, DeepSeek-V2): keys and values are rebuilt per head from one shared
  latent c = W_down x of kv_latent numbers; positions enter through a separate rotary key part
  of rope_dim numbers shared by all heads (rotary cannot be applied to the latent itself). The
  cache holds kv_latent + rope_dim numbers per token.

Both use the kernel named by config.attn (manual or sdpa) and are causal like the baseline's.
Use: GPT(config, block=functools.partial(Block, attention=functools.partial(GroupedQueryAttention, n_kv_head=4))).
"""

import torch
import torch.nn as nn

from kit.modeling.model import ATTENTION, GPTConfig
from kit.modeling.modern import Rotary


def residual_linear(fan_in: int, fan_out: int) -> nn.Linear:
    layer = nn.Linear(fan_in, fan_out)
    layer.residual_projection = True  # GPT-2 init scales it by depth
    return layer


def share_heads(k, v, n_head: int):
    """Key/value heads (B, n_kv_head, T, D) repeated so that each serves its group of query heads."""
    group = n_head // k.size(1)
    return k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)


class GroupedQueryAttention(nn.Module):
    def __init__(self, config: GPTConfig, n_kv_head: int):
        super().__init__()
        if config.n_head % n_kv_head:
            raise ValueError(f"n_head {config.n_head} is not a multiple of n_kv_head {n_kv_head}")
        self.n_head, self.n_kv_head = config.n_head, n_kv_head
        self.head_dim = config.n_embd // config.n_head
        self.q = nn.Linear(config.n_embd, config.n_embd)
        self.kv = nn.Linear(config.n_embd, 2 * n_kv_head * self.head_dim)
        self.c_proj = residual_linear(config.n_embd, config.n_embd)
        self.attend = ATTENTION[config.attn]

    def heads(self, x):
        """x (B, T, C) -> q (B, n_head, T, D) and k, v (B, n_kv_head, T, D)."""
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k, v = self.kv(x).view(B, T, 2, self.n_kv_head, self.head_dim).permute(2, 0, 3, 1, 4)
        return q, k, v

    def merge(self, y):
        B, _, T, _ = y.shape
        return self.c_proj(y.transpose(1, 2).reshape(B, T, -1))

    def forward(self, x):
        q, k, v = self.heads(x)
        return self.merge(self.attend(q, *share_heads(k, v, self.n_head)))

    def cache_numbers_per_token(self) -> int:
        return 2 * self.n_kv_head * self.head_dim


class MultiLatentAttention(nn.Module):
    def __init__(self, config: GPTConfig, kv_latent: int, rope_dim: int = 32):
        super().__init__()
        self.n_head, self.head_dim, self.rope_dim = config.n_head, config.n_embd // config.n_head, rope_dim
        inner = self.n_head * self.head_dim
        self.q = nn.Linear(config.n_embd, self.n_head * (self.head_dim + rope_dim))
        self.kv_down = nn.Linear(config.n_embd, kv_latent)
        self.k_up = nn.Linear(kv_latent, inner, bias=False)
        self.v_up = nn.Linear(kv_latent, inner, bias=False)
        self.k_rope = nn.Linear(config.n_embd, rope_dim) if rope_dim else None
        self.rotary = Rotary(rope_dim, config.block_size) if rope_dim else None
        self.c_proj = residual_linear(inner, config.n_embd)
        self.attend = ATTENTION[config.attn]

    def forward(self, x):
        B, T, _ = x.shape
        H, D, R = self.n_head, self.head_dim, self.rope_dim
        latent = self.kv_down(x)  # what a cache would hold, with the rotary key part
        q = self.q(x).view(B, T, H, D + R)
        k = self.k_up(latent).view(B, T, H, D)
        v = self.v_up(latent).view(B, T, H, D)
        if R:
            q_content, q_position = q.split([D, R], dim=-1)
            k_position = self.rotary(self.k_rope(x).view(B, T, 1, R)).expand(B, T, H, R)
            q = torch.cat([q_content, self.rotary(q_position)], dim=-1)
            k = torch.cat([k, k_position], dim=-1)
        y = self.attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2))  # scale 1/sqrt(D + R)
        return self.c_proj(y.transpose(1, 2).reshape(B, T, H * D))

    def cache_numbers_per_token(self) -> int:
        return self.kv_down.out_features + self.rope_dim
