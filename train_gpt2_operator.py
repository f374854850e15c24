"""A causal operator-network token mixer (DeepONet-style kernel integral over the past) in place of attention in the top layers.

The idea: a neural operator maps a function to a function, as FNO and DeepONet (Lu et al. 2021) do for
families of PDEs. Here the input function is the context, token states x_s at positions s, and the
output is a function of the position t it is read at. A kernel integral operator over the past,

    y_t = sum_{s <= t} kappa(t - s, x_s),

is causal by construction. DeepONet writes an operator as a sum over P basis terms of a branch net (of
the input function) times a trunk net (of where the output is evaluated); here, per channel c,

    kappa(l, x_s)[c] = sum_p  branch_p(x_s)[c] * trunk_p(l)[c],

with the branch a linear map of the token's state (what it contributes) and the trunk a small MLP of
the lag l (how that contribution carries over distance), each basis term under its own decay envelope
exp(-l / tau_p) with tau_p from 4 tokens to the context length, so the P terms cover short and long
memory. The sum over s for each (p, c) is one causal long convolution (kit/ideas/longconv.py: FFTs
padded to 2T), so the mixer costs O(T log T). A gate from the query token, sigmoid(G x_t), scales the
output (the trunk's evaluation point is a position, not content), and a projection goes back to the
residual stream. Hybrid like the AFNO variant: attention stays in the bottom layers.

    python train_gpt2_operator.py --data webmix                          # top 6 of 12 layers are operator layers
    python train_gpt2_operator.py --data webmix --operator-layers 12     # no attention at all
"""

import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn

from kit.core.config import layer_count
from kit.core.errors import UserError
from kit.ideas.longconv import causal_fft_conv
from kit.loop.train import Recipe, main
from kit.modeling.model import GPT, gpt_config

import train_gpt2 as baseline  # the baseline's optimizer, shared

LAG_FEATURES = 8


def lag_features(lags: int, max_len: int, device) -> torch.Tensor:
    """(lags, LAG_FEATURES): the trunk net's input for lags 0..lags-1: linear and log scales and a few sinusoids."""
    lag = torch.arange(lags, device=device, dtype=torch.float32)
    scaled = lag / max_len
    angles = scaled[:, None] * (math.pi * 2.0 ** torch.arange(LAG_FEATURES - 2, device=device))[None, :]
    return torch.cat([scaled[:, None], (torch.log1p(lag) / math.log1p(max_len))[:, None], torch.sin(angles)], dim=1)


class CausalOperatorMixer(nn.Module):
    """A drop-in token mixer for kit.modeling.model.Block: y_t = proj(gate(x_t) * sum_p sum_{s<=t} branch_p(x_s) trunk_p(t-s))."""

    def __init__(self, width: int, max_len: int, basis: int = 4, trunk_hidden: int = 64):
        super().__init__()
        self.width, self.max_len, self.basis = width, max_len, basis
        self.branch = nn.Linear(width, basis * width)
        self.trunk = nn.Sequential(nn.Linear(LAG_FEATURES, trunk_hidden), nn.GELU(), nn.Linear(trunk_hidden, basis * width))
        timescales = torch.logspace(math.log10(4.0), math.log10(max(max_len, 8)), basis)  # 4 tokens .. the context
        self.register_buffer("timescales", timescales, persistent=False)
        self.gate = nn.Linear(width, width)
        self.proj = nn.Linear(width, width)
        self.proj.residual_projection = True  # GPT-2 init scales it by depth

    def kernel(self, T: int) -> torch.Tensor:
        """(basis * width, T): trunk_p(l)[c] * exp(-l / tau_p) for lags 0..T-1, row p * width + c."""
        weight = self.trunk[0].weight
        trunk = self.trunk(lag_features(T, self.max_len, weight.device).to(weight.dtype))  # (T, basis * width)
        trunk = trunk.to(torch.promote_types(trunk.dtype, torch.float32))
        envelope = torch.exp(-torch.arange(T, device=trunk.device, dtype=trunk.dtype)[:, None] / self.timescales[None, :])  # (T, basis)
        return (trunk.view(T, self.basis, self.width) * envelope[:, :, None]).reshape(T, -1).t()

    def forward(self, x):
        B, T, C = x.shape
        mixed = causal_fft_conv(self.branch(x), self.kernel(T))  # (B, T, basis * width), float32
        summed = mixed.view(B, T, self.basis, C).sum(2)
        return self.proj((torch.sigmoid(self.gate(x)).to(summed.dtype) * summed).type_as(x))


class OperatorGPT(GPT):
    """The baseline GPT whose top layers mix tokens with CausalOperatorMixer; counts the FLOPs they run."""

    def flops_per_token(self, seq_len: int) -> int:
        """kit.modeling.flops' count (every Linear's weights, the trunk's included though it runs per lag, not per
        token: under 1% at the baseline's batch) with attention's 12 d T per token only for attention layers, and
        per operator layer its FFT convolution: for each of basis x width channels, a forward and an inverse
        real FFT of length 2T (2.5 N log2 N each, over T tokens) and the spectral product, times 3 for training."""
        from kit.modeling.flops import attention_flops_per_token, linear_weight_count

        mixers = [b.attn for b in self.h if isinstance(b.attn, CausalOperatorMixer)]
        fft = sum(3 * m.basis * m.width * (2 * 2.5 * 2 * math.log2(2 * seq_len) + 6) for m in mixers)
        attention = attention_flops_per_token(self.config.n_layer - len(mixers), self.config.n_embd, seq_len)
        return int(6 * linear_weight_count(self) + attention + fft)


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    MODEL_SIZE_PRESETS: ClassVar[dict] = {"tiny": {"operator_layers": 1}}  # one of the tiny model's two layers
    operator_layers: int = field(default=6, metadata={"help": "layers (from the top) whose attention becomes the operator mixer"})
    operator_basis: int = field(default=4, metadata={"help": "basis terms P (branch x trunk products), each with its own decay timescale"})


def build_model(cfg: Hyperparameters):
    config = gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn)
    layer_count("--operator-layers", cfg.operator_layers, config.n_layer)
    if cfg.operator_basis < 1:
        raise UserError(f"--operator-basis {cfg.operator_basis}: at least 1")
    model = OperatorGPT(config)
    model.replace_mixers(config.n_layer - cfg.operator_layers, lambda: CausalOperatorMixer(config.n_embd, config.block_size, cfg.operator_basis))
    return model


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
