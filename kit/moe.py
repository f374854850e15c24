"""Mixture-of-experts feed-forward layer: a learned router sends each token to its top-k experts.

Routing: router logits -> softmax over experts -> the k largest. With k = 1 (Switch Transformer)
the output is gate * expert(x) with gate = the router probability (so the router gets a
gradient); with k > 1 the k gates are renormalised to sum to 1.
Capacity: each expert takes at most ceil(capacity_factor * k * N / E) of the N tokens' k
assignments in a batch (in routing order); the rest are dropped (the token passes through the
residual only) and counted. capacity_factor 0 means dropless: every expert takes all it is sent
(the buffer's size then depends on the batch, which a compiled model recompiles for).
Compute: assignments are sorted by expert and packed into an (E, capacity + 1, d) buffer (the
extra slot collects the dropped ones and is discarded), so the experts run as two batched
matmuls (torch.baddbmm), not a Python loop over tokens, and every shape is fixed.
Balance: the Switch loss E * sum_e f_e * P_e (f_e = share of assignments routed to expert e,
P_e = mean router probability of e) is 1 when routing is uniform and grows as it concentrates.
"""

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class MoEMLP(nn.Module):
    def __init__(self, width: int, n_experts: int, top_k: int = 1, capacity_factor: float = 1.25, hidden: int = None,
                 std: float = 0.02, out_std: float = 0.02):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top-k {top_k} must be between 1 and the number of experts ({n_experts})")
        hidden = hidden or 4 * width
        self.n_experts, self.top_k, self.capacity_factor = n_experts, top_k, capacity_factor
        self.router = nn.Linear(width, n_experts, bias=False)
        self.w_in = nn.Parameter(torch.randn(n_experts, width, hidden) * std)
        self.b_in = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w_out = nn.Parameter(torch.randn(n_experts, hidden, width) * out_std)
        self.b_out = nn.Parameter(torch.zeros(n_experts, width))
        nn.init.normal_(self.router.weight, std=std)
        self.register_buffer("load", torch.zeros(n_experts), persistent=False)  # assignments per expert, summed while training
        self.register_buffer("dropped", torch.zeros(()), persistent=False)  # assignments dropped for capacity
        self.register_buffer("routed", torch.zeros(()), persistent=False)  # all assignments
        self.aux_loss = None  # the last training batch's balance loss

    def route(self, flat):
        """(gates (N, k), experts (N, k), router probabilities (N, E))."""
        probs = F.softmax(self.router(flat).float(), dim=-1)
        top_p, top_e = probs.topk(self.top_k, dim=-1)
        gates = top_p if self.top_k == 1 else top_p / top_p.sum(-1, keepdim=True)
        return gates, top_e, probs

    def capacity(self, assignments: int, counts) -> int:
        if self.capacity_factor <= 0:
            return int(counts.max())
        return math.ceil(self.capacity_factor * assignments / self.n_experts)

    def expert_mlps(self, packed):
        """(E, C, d) -> (E, C, d): each expert's MLP on its slots, as two batched matmuls."""
        dtype = packed.dtype
        hidden = F.gelu(torch.baddbmm(self.b_in[:, None].to(dtype), packed, self.w_in.to(dtype)), approximate="tanh")
        return torch.baddbmm(self.b_out[:, None].to(dtype), hidden, self.w_out.to(dtype))

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        gates, experts, probs = self.route(flat)
        expert_of = experts.reshape(-1)  # assignment a: token a // k, its (a % k)-th choice
        order = torch.argsort(expert_of, stable=True)  # by expert; routing order kept within one
        sorted_expert, token = expert_of[order], order // self.top_k
        counts = torch.bincount(expert_of, minlength=self.n_experts)
        slot = torch.arange(len(order), device=x.device) - (torch.cumsum(counts, 0) - counts)[sorted_expert]
        capacity = self.capacity(len(order), counts)
        keep = slot < capacity
        slot = torch.where(keep, slot, capacity)  # dropped assignments go to the spare slot
        packed = flat.new_zeros(self.n_experts, capacity + 1, shape[-1])
        packed[sorted_expert, slot] = flat[token]
        out = self.expert_mlps(packed)[sorted_expert, slot]
        weight = gates.reshape(-1)[order] * keep
        y = flat.new_zeros(flat.shape).index_add_(0, token, (out * weight[:, None].to(out.dtype)).to(flat.dtype))
        if self.training:
            self.aux_loss = self.balance_loss(counts, probs)
            with torch.no_grad():
                self.load += counts
                self.routed += len(order)
                self.dropped += (~keep).sum()
        return y.view(shape)

    def balance_loss(self, counts, probs):
        """Switch Transformer's E * sum_e f_e P_e: 1 when uniform, up to E when one expert takes all."""
        f = counts.float() / counts.sum()
        return self.n_experts * (f * probs.mean(0)).sum()
