"""GPT-2 parts: the baseline model every variant starts from.

Variants replace one part (attention, MLP, embedding, head) and keep the rest; each part is a
small module so a variant script can swap it without copying the others.
"""

import functools
import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class GPTConfig:
    vocab_size: int = 50257
    block_size: int = 1024
    n_layer: int = 12
    n_head: int = 12
    n_embd: int = 768
    attn: str = "manual"


# (n_layer, n_head, n_embd); tiny exists for CPU smoke tests.
MODEL_SIZES = {
    "tiny": (2, 2, 64),
    "124m": (12, 12, 768),
    "350m": (24, 16, 1024),
    "774m": (36, 20, 1280),
    "1558m": (48, 25, 1600),
}


def gpt_config(model_size: str, **overrides) -> GPTConfig:
    """The size's shape, with any field (the head count too) overridden."""
    n_layer, n_head, n_embd = MODEL_SIZES[model_size]
    return GPTConfig(**{"n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, **overrides})


def manual_causal_attention(q, k, v):
    """The user's original attention: explicit scores, mask, softmax. q, k, v: (B, H, T, D)."""
    T = q.size(-2)
    scores = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
    future = torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    return F.softmax(scores, dim=-1) @ v


def sdpa_causal_attention(q, k, v):
    """PyTorch's fused kernels (FlashAttention, memory-efficient or math, picked per GPU)."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


@functools.lru_cache(maxsize=8)
def causal_block_mask(seq_len: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    return create_block_mask(lambda b, h, q, kv: q >= kv, None, None, seq_len, seq_len, device=device)


def raise_recompile_limit(at_least: int = 32) -> None:
    """Compiled blocks share one code object, so each shape or variant they meet (training, evaluation,
    with or without value embeddings) counts against dynamo's per-code recompile limit (8), past which
    new variants run uncompiled."""
    config = torch._dynamo.config
    limit = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"  # its name before torch 2.6
    setattr(config, limit, max(getattr(config, limit), at_least))


def cache_custom_autograd_graphs() -> None:
    """Let AOTAutograd's compile cache keep graphs that call the kit's autograd Functions (the FP8 head, the fused
    losses). torch bypasses that cache for every custom autograd Function unless told otherwise, as one could act
    outside what its traced forward and backward show; the kit's are tensor code that Dynamo traces into the graph,
    so the cache key covers them. Without this the record script's training graph was traced again by every run,
    warm cache or not (15.8 of a 19.4 s warm-up on an H200)."""
    import torch._functorch.config as functorch_config

    if hasattr(functorch_config, "autograd_cache_allow_custom_autograd_functions"):
        functorch_config.autograd_cache_allow_custom_autograd_functions = True


def compile_regions(model, **compile_kwargs):
    """Compile a GPT's blocks one by one and its loss (head + cross-entropy over the vocabulary), in
    place: Python between them (LayerDrop's skipped blocks) stays eager without recompiling, and the
    loss is fused as whole-model compilation fuses it. The compiled loss is bound to this model: a
    deep copy would still compute it with the original's weights, so compile copies, not originals."""
    raise_recompile_limit()
    for block in model.h:
        block.compile(**compile_kwargs)
    model.loss = torch.compile(model.loss, **compile_kwargs)
    return model


@functools.lru_cache(maxsize=1)
def compiled_flex_attention():
    """FlexAttention is only fast compiled; on the CPU the eager (unfused) version is used."""
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def flex_causal_attention(q, k, v):
    """FlexAttention with a causal block mask (fully masked blocks are skipped)."""
    from torch.nn.attention.flex_attention import flex_attention

    mask = causal_block_mask(q.size(-2), str(q.device))
    kernel = compiled_flex_attention() if q.is_cuda else flex_attention
    return kernel(q, k, v, block_mask=mask)


def bidirectional_attention(q, k, v):
    """Every position sees every other (no mask): encoders, the diffusion model's denoiser."""
    return F.scaled_dot_product_attention(q, k, v)


ATTENTION = {"manual": manual_causal_attention, "sdpa": sdpa_causal_attention, "flex": flex_causal_attention,
             "bidirectional": bidirectional_attention}


class CausalSelfAttention(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        assert config.n_embd % config.n_head == 0
        self.n_head = config.n_head
        self.c_attn = nn.Linear(config.n_embd, 3 * config.n_embd)
        self.c_proj = nn.Linear(config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True
        self.attend = ATTENTION[config.attn]

    def heads(self, x):
        """x (B, T, C) -> q, k, v, each (B, n_head, T, C / n_head)."""
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        return tuple(t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))

    def merge(self, y):
        """Attention output (B, n_head, T, D) -> the projected (B, T, C)."""
        B, _, T, _ = y.shape
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, -1))

    def forward(self, x):
        return self.merge(self.attend(*self.heads(x)))


class MLP(nn.Module):
    def __init__(self, config: GPTConfig):
        super().__init__()
        self.c_fc = nn.Linear(config.n_embd, 4 * config.n_embd)
        self.c_proj = nn.Linear(4 * config.n_embd, config.n_embd)
        self.c_proj.residual_projection = True

    def forward(self, x):
        return self.c_proj(F.gelu(self.c_fc(x), approximate="tanh"))


class Block(nn.Module):
    """Pre-LayerNorm block; `attention` builds the sequence mixer (variants pass their own)."""

    def __init__(self, config: GPTConfig, attention=CausalSelfAttention):
        super().__init__()
        self.ln_1 = nn.LayerNorm(config.n_embd)
        self.attn = attention(config)
        self.ln_2 = nn.LayerNorm(config.n_embd)
        self.mlp = MLP(config)

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    """GPT-2: learned positions, pre-LayerNorm blocks, tied input/output embeddings.

    model(idx) returns logits (B, T, V); model(idx, targets) returns the mean cross-entropy.
    """

    def __init__(self, config: GPTConfig, block=Block):
        super().__init__()
        self.config = config
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.wpe = nn.Embedding(config.block_size, config.n_embd)
        self.h = nn.ModuleList(block(config) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.n_embd)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        self.lm_head.weight = self.wte.weight
        self.apply(self._init_weights)

    def replace_mixers(self, first: int, make) -> None:
        """Blocks first..n_layer-1 mix tokens with make() instead of attention, initialised as the model's own
        layers are (the hybrid variants: attention below, another mixer above)."""
        for block in self.h[first:]:
            block.attn = make()
            block.attn.apply(self._init_weights)

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_projection", False):  # GPT-2: scale by depth of the residual sum
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def embed(self, idx, positions=None):
        """Token plus position embeddings, (B, T, n_embd). positions: each token's (default 0..T-1;
        a KV-cached decode or document-relative positions pass their own)."""
        if positions is None:
            T = idx.size(1)
            if T > self.config.block_size:
                raise ValueError(f"sequence of {T} tokens is longer than the model's block size {self.config.block_size}")
            positions = torch.arange(T, device=idx.device)
        return self.token_embeddings(idx) + self.wpe(positions)

    def token_embeddings(self, idx):
        return self.wte(idx)

    def hidden(self, idx):
        """The final hidden states (after the last LayerNorm), (B, T, n_embd)."""
        x = self.embed(idx)
        for block in self.h:
            x = block(x)
        return self.ln_f(x)

    def forward(self, idx, targets=None):
        h = self.hidden(idx)
        if targets is None:
            return self.logits(h)
        return self.loss(h, targets, idx)

    def logits(self, h):
        """Scores over the vocabulary (variants with factorised outputs return log-probabilities)."""
        return self.lm_head(h)

    def loss(self, h, targets, idx=None):
        """Mean cross-entropy of the full softmax (variants with other output heads override this;
        idx, the input tokens, is there for losses that look at the previous token)."""
        logits = self.logits(h)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.reshape(-1))


def count_parameters(model: nn.Module) -> int:
    """Unique parameters (the tied embedding counted once)."""
    return sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())
