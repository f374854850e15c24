"""The baseline with multi-token prediction: while training, the trunk's state at position t also
predicts tokens t+2 .. t+1+K (--mtp-offsets K, at most 3), through the shared output head.

--mtp-style parallel: one small residual adapter per offset on the trunk's final state
(h + W_k LN(h), W_k zero-initialised). --mtp-style sequential (DeepSeek-V3): module k joins the
previous depth's state at t with the embedding of token t+k (W_k [LN(h); LN(emb)]) and runs one
transformer block, so each depth predicts one token further, knowing the tokens in between.
Offset k's loss weight starts at --mtp-weight and falls linearly to 0, the furthest offset
first: offset k of K reaches 0 at --mtp-frac x (K - k + 1) / K of the run, so the number of
predicted offsets anneals from K to 0 and the end of the run trains next-token prediction only.
Validation is always the plain next-token loss. Offsets whose weight reached 0 are no longer
computed (each costs about one output-head matmul, or a block and a head when sequential); with
--compile 1 each number of offsets is its own compiled graph, all compiled in the untimed
warm-up, so none compiles inside a timed step.

    python train_gpt2_mtp.py --data webmix --mtp-offsets 2
    python train_gpt2_mtp.py --data webmix --mtp-offsets 3 --mtp-style sequential
"""

import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.modeling.model import GPT, Block, gpt_config
from kit.modeling.optim import linear_to_zero
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    mtp_offsets: int = field(default=2, metadata={"help": "extra future tokens predicted (1..3): t+2 .. t+1+K"})
    mtp_style: str = field(default="parallel", metadata={"choices": ["parallel", "sequential"]})
    mtp_weight: float = field(default=0.3, metadata={"help": "each offset's loss weight at the start"})
    mtp_frac: float = field(default=0.5, metadata={"help": "share of the run after which no offset is trained"})


class ParallelOffset(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.norm = nn.LayerNorm(config.n_embd)
        self.adapter = nn.Linear(config.n_embd, config.n_embd, bias=False)
        nn.init.zeros_(self.adapter.weight)

    def forward(self, h):
        return h + self.adapter(self.norm(h))


class SequentialOffset(nn.Module):
    """DeepSeek-V3's MTP module: state at t and embedding of token t+k -> one block."""

    def __init__(self, config):
        super().__init__()
        self.norm_h, self.norm_e = nn.LayerNorm(config.n_embd), nn.LayerNorm(config.n_embd)
        self.join = nn.Linear(2 * config.n_embd, config.n_embd, bias=False)
        self.block = Block(config)
        self.norm_out = nn.LayerNorm(config.n_embd)

    def forward(self, h, next_embedding):
        return self.norm_out(self.block(self.join(torch.cat([self.norm_h(h), self.norm_e(next_embedding)], dim=-1))))


class MTPGPT(GPT):
    def __init__(self, config, offsets: int, style: str):
        if not 1 <= offsets <= 3:
            raise ValueError("--mtp-offsets must be 1, 2 or 3")
        super().__init__(config)
        module = ParallelOffset if style == "parallel" else SequentialOffset
        self.offsets = nn.ModuleList(module(config) for _ in range(offsets))
        self.sequential = style == "sequential"
        if self.sequential:  # the baseline's init for the modules' layers (parallel adapters stay zero)
            self.offsets.apply(self._init_weights)
        self.register_buffer("mtp_weights", torch.zeros(offsets), persistent=False)
        self.active_offsets = offsets  # offsets with a weight above 0: the others are not computed

    def offset_states(self, h, idx):
        """For k = 1..K: the state that predicts token t+1+k, for positions t = 0 .. T-1-k."""
        states, state = [], h
        for k, module in enumerate(self.offsets[: self.active_offsets], start=1):
            if self.sequential:  # depth k sees token t+k, and the previous depth's state at t
                state = module(state[:, : h.size(1) - k], self.wte(idx[:, k:]))
            else:
                state = module(h[:, : h.size(1) - k])
            states.append(state)
        return states

    def loss(self, h, targets, idx=None):
        loss = super().loss(h, targets, idx)
        if not self.training:
            return loss
        for k, state in enumerate(self.offset_states(h, idx), start=1):
            logits = self.lm_head(state).float()
            loss = loss + self.mtp_weights[k - 1] * F.cross_entropy(logits.reshape(-1, logits.size(-1)), targets[:, k:].reshape(-1))
        return loss


def offset_weight(step: int, k: int, cfg: Hyperparameters) -> float:
    """Offset k's weight: cfg.mtp_weight at step 0, 0 from mtp_frac x (K - k + 1) / K of the run on."""
    return linear_to_zero(step, cfg.max_steps, cfg.mtp_weight, cfg.mtp_frac * (cfg.mtp_offsets - k + 1) / cfg.mtp_offsets)


def before_step(step: int, model: MTPGPT, optimizers, cfg: Hyperparameters) -> None:
    weights = [offset_weight(step, k, cfg) for k in range(1, cfg.mtp_offsets + 1)]
    model.mtp_weights.copy_(torch.tensor(weights))
    model.active_offsets = sum(w > 0 for w in weights)  # further offsets reach 0 first


def offset_counts(model: MTPGPT, cfg: Hyperparameters) -> list:
    """Functions setting each number of offsets the run will train (K .. 0), for the warm-up."""
    return [lambda k=k: setattr(model, "active_offsets", k) for k in range(cfg.mtp_offsets, -1, -1)]


def build_model(cfg: Hyperparameters):
    return MTPGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), cfg.mtp_offsets, cfg.mtp_style)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=before_step, ddp_find_unused=True,  # offsets whose weight reached 0 are skipped
                warm_up_states=offset_counts)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
