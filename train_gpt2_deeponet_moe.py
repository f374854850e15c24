"""Mixture-of-experts with a DeepONet router: expert scores from a branch net on the context so far and a trunk net on the token.

The idea: DeepONet (Lu et al. 2021) learns an operator G(u)(y) as the inner product of a branch net of
the input function u and a trunk net of the point y it is evaluated at, sum_p b_p(u) t_p(y). As a
router: the input function is the context a token sits in and the evaluation point is the token
itself, so the score of expert e for token t is

    score_e(t) = sum_p branch(c_t)[e, p] * trunk(x_t)[p],     c_t = mean of x_0..x_t,

with c_t a causal summary of the sequence up to the token (its running mean: causal, and the same
whichever batch the token is in) and x_t the token's state. The plain router scores x_t alone (a
linear map); this one lets the context choose which features of the token decide the expert, so a
token can go to different experts in different kinds of documents. Everything else is
train_gpt2_moe.py's (experts, top-k, capacity, balance loss, kernels, the routing report);
--router linear runs that plain router in this script, for the same-expert-count comparison.

    python train_gpt2_deeponet_moe.py --data webmix --experts 4
    python train_gpt2_deeponet_moe.py --data webmix --experts 4 --router linear   # the plain router
"""

import functools
import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn

from kit.core.errors import UserError
from kit.loop.train import Recipe, main
from kit.modeling.model import gpt_config

import train_gpt2 as baseline  # the baseline's optimizer, shared
import train_gpt2_moe as moe  # the experts, their kernels and the routing report, shared


def causal_mean(x):
    """(B, T, d) -> (B, T, d): the mean of x_0..x_t at each t."""
    counts = torch.arange(1, x.size(1) + 1, device=x.device, dtype=torch.float32)[None, :, None]
    return (x.float().cumsum(1) / counts).to(x.dtype)


class DeepONetMoEMLP(moe.MoEMLP):
    """moe.MoEMLP whose router is DeepONet's branch (context) x trunk (token) inner product over `basis` terms."""

    def __init__(self, width: int, n_experts: int, *args, basis: int = 16, router_hidden: int = 128, **kwargs):
        super().__init__(width, n_experts, *args, **kwargs)
        del self.router  # replaced by the two nets
        self.basis = basis
        self.branch = nn.Sequential(nn.Linear(width, router_hidden), nn.GELU(), nn.Linear(router_hidden, n_experts * basis))
        self.trunk = nn.Sequential(nn.Linear(width, router_hidden), nn.GELU(), nn.Linear(router_hidden, basis))

    def router_logits(self, flat, x):
        branch = self.branch(causal_mean(x)).view(-1, self.n_experts, self.basis)  # (N, E, P)
        trunk = self.trunk(flat)  # (N, P)
        return torch.einsum("nep,np->ne", branch, trunk) / self.basis ** 0.5


@dataclass
class Hyperparameters(moe.Hyperparameters):
    router: str = field(default="deeponet", metadata={"choices": ["deeponet", "linear"], "help": "deeponet: branch (context) x trunk (token); linear: train_gpt2_moe.py's"})
    router_basis: int = field(default=16, metadata={"help": "DeepONet basis terms P"})
    router_hidden: int = field(default=128, metadata={"help": "hidden width of the branch and trunk nets"})


def build_model(cfg: Hyperparameters):
    if cfg.router_basis < 1 or cfg.router_hidden < 1:
        raise UserError(f"--router-basis {cfg.router_basis} and --router-hidden {cfg.router_hidden}: both at least 1")
    layer = functools.partial(DeepONetMoEMLP, basis=cfg.router_basis, router_hidden=cfg.router_hidden) if cfg.router == "deeponet" else None
    return moe.MoEGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), cfg, moe.expert_kernel(cfg), layer=layer)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=moe.before_step, trainer=moe.MoETrainer)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
