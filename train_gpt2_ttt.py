"""Test-time training (TTT) layers: a fast-weight inner model, updated by a gradient step per chunk inside the forward pass.

The idea (Sun et al. 2024, "Learning to (Learn at Test Time): RNNs with Expressive Hidden States"; the
fast-weight line of Schmidhuber 1992 and Schlag et al. 2021): a layer's hidden state is the weight matrix
W of a small inner model, and reading a sequence is learning on it. Each head projects token x_t to a
key k_t, a value v_t and a query q_t; the inner model f(k) = k W is trained to reconstruct v from k,
loss_t(W) = 1/2 ||k_t W - v_t||^2, and the layer outputs f(q_t) with the weights learned so far. The
model "learns on small updates" while it reads, with its outer weights (the projections, W's start, the
inner learning rate) trained by ordinary backpropagation through those updates.

Mini-batch TTT-Linear, in its dual form: the sequence is cut into chunks of n = --ttt-chunk tokens;
every token of chunk c takes its gradient at W_c, the weights after chunks 0..c-1, and token t sees the
updates of the chunk's tokens up to itself (the step is the chunk's mean gradient, eta / n per token):

    W_t = W_c - eta/n * sum_{s <= t in the chunk} k_s^T (k_s W_c - v_s)
    z_t = q_t W_t = q_t W_c - eta/n * sum_{s <= t} (q_t . k_s) (k_s W_c - v_s)
    W_{c+1} = W_c - eta/n * K_c^T (K_c W_c - V_c)

so output t depends on tokens 0..t only (causal), and a chunk costs a few matmuls instead of a loop over
its tokens. eta is a learned inner learning rate per head (softplus, started at --ttt-inner-lr); keys and
queries are L2-normalised, so the mean of a chunk's k_s^T k_s has eigenvalues <= 1 and a step of eta < 2
cannot blow W up (a summed gradient would: 16 keys in 8 dimensions diverged at eta = 1). Hybrid like the AFNO variant:
attention keeps the bottom layers, TTT layers replace attention in the top --ttt-layers.

    python train_gpt2_ttt.py --data webmix                   # the top 6 of 12 layers are TTT layers
    python train_gpt2_ttt.py --data webmix --ttt-layers 12   # TTT only
"""

import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.core.config import layer_count
from kit.core.errors import UserError
from kit.loop.train import Recipe, main
from kit.modeling.model import GPT, gpt_config

import train_gpt2 as baseline  # the baseline's optimizer, shared


class TTTLinear(nn.Module):
    """A drop-in token mixer for kit.modeling.model.Block: per head, a linear inner model trained on the sequence."""

    def __init__(self, width: int, n_head: int, chunk: int = 64, inner_lr: float = 1.0):
        super().__init__()
        if width % n_head:
            raise ValueError(f"width {width} is not a multiple of n_head {n_head}")
        self.n_head, self.head_dim, self.chunk = n_head, width // n_head, chunk
        self.qkv = nn.Linear(width, 3 * width)
        self.w0 = nn.Parameter(torch.zeros(n_head, self.head_dim, self.head_dim))  # W's start: the inner model knows nothing yet
        self.lr_logit = nn.Parameter(torch.full((n_head,), math.log(math.expm1(inner_lr))))  # softplus(lr_logit) = inner_lr at the start
        self.norm = nn.LayerNorm(self.head_dim)
        self.c_proj = nn.Linear(width, width)
        self.c_proj.residual_projection = True  # GPT-2 init scales it by depth

    def inner_lr(self):
        return F.softplus(self.lr_logit)  # (H,)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.n_head, self.head_dim).permute(2, 0, 3, 1, 4)  # (B, H, T, D) each
        z = ttt_linear(F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1), v.float(), self.w0.float(), self.inner_lr().float(), self.chunk)
        z = self.norm(z.to(x.dtype))
        return self.c_proj(z.transpose(1, 2).reshape(B, T, C))


def ttt_linear(q, k, v, w0, eta, chunk: int):
    """Mini-batch TTT-Linear in its dual form: q, k, v (B, H, T, D); w0 (H, D, D); eta (H,). Returns z (B, H, T, D)."""
    B, H, T, D = q.shape
    w = w0.expand(B, H, D, D)
    eta = eta.view(1, H, 1, 1)
    outputs = []
    for start in range(0, T, chunk):
        qc, kc, vc = (t[:, :, start:start + chunk] for t in (q, k, v))
        step = eta / qc.size(2)  # the chunk's mean gradient
        errors = kc @ w - vc  # (B, H, n, D): each token's gradient is k_s^T error_s
        seen = torch.tril(qc @ kc.transpose(-1, -2))  # (B, H, n, n): q_t . k_s for s <= t
        outputs.append(qc @ w - step * (seen @ errors))
        w = w - step * (kc.transpose(-1, -2) @ errors)
    return torch.cat(outputs, dim=2)


def ttt_linear_sequential(q, k, v, w0, eta, chunk: int):
    """The same computation token by token (the reference the tests hold ttt_linear to)."""
    B, H, T, D = q.shape
    z = torch.empty_like(q)
    for b in range(B):
        for h in range(H):
            w_chunk = w0[h].clone()
            for start in range(0, T, chunk):
                w_t = w_chunk.clone()
                step = eta[h] / (min(start + chunk, T) - start)
                for t in range(start, min(start + chunk, T)):
                    w_t = w_t - step * torch.outer(k[b, h, t], k[b, h, t] @ w_chunk - v[b, h, t])  # gradient at W_c
                    z[b, h, t] = q[b, h, t] @ w_t
                w_chunk = w_t
    return z


class TTTGPT(GPT):
    """The baseline GPT whose top layers mix tokens with TTTLinear; counts the FLOPs those layers run."""

    def flops_per_token(self, seq_len: int) -> int:
        """kit.modeling.flops' count with attention's 12 d T per token only for the attention layers, and per TTT
        layer the inner model's work per token and head: q W, k W and the update k^T E (2 D^2 each) and the
        chunk's q k^T and its product with the errors (2 chunk D each, the full square), times 3 for training."""
        from kit.modeling.flops import attention_flops_per_token, linear_weight_count

        ttt = [b.attn for b in self.h if isinstance(b.attn, TTTLinear)]
        width = self.config.n_embd
        inner = sum(3 * (3 * 2 * width * m.head_dim + 2 * 2 * min(m.chunk, seq_len) * width) for m in ttt)
        return 6 * linear_weight_count(self) + attention_flops_per_token(self.config.n_layer - len(ttt), width, seq_len) + inner


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    MODEL_SIZE_PRESETS: ClassVar[dict] = {"tiny": {"ttt_layers": 1}}  # one of the tiny model's two layers
    ttt_layers: int = field(default=6, metadata={"help": "layers (from the top) whose attention becomes a TTT layer"})
    ttt_chunk: int = field(default=64, metadata={"help": "tokens per inner update (each token also sees its chunk's earlier updates)"})
    ttt_inner_lr: float = field(default=1.0, metadata={"help": "the inner learning rate's start (learned per head from there)"})


def build_model(cfg: Hyperparameters):
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    layer_count("--ttt-layers", cfg.ttt_layers, config.n_layer)
    if cfg.ttt_chunk < 1 or cfg.ttt_inner_lr <= 0:
        raise UserError(f"--ttt-chunk {cfg.ttt_chunk} and --ttt-inner-lr {cfg.ttt_inner_lr}: both positive")
    model = TTTGPT(config)
    model.replace_mixers(config.n_layer - cfg.ttt_layers, lambda: TTTLinear(config.n_embd, config.n_head, cfg.ttt_chunk, cfg.ttt_inner_lr))
    return model


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
