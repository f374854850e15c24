"""The baseline with mixture-of-experts feed-forward layers.

Every --moe-every-th block (default: every block) replaces its MLP by --experts expert MLPs of
the same shape behind a learned router: top-1 (Switch) routing by default, --top-k for more,
--capacity-factor per expert (0: dropless), and --balance-weight x the Switch balance loss
added to the training loss (never to validation). Each token runs k experts, so the compute per
token stays near the baseline's (k = 1) while the parameters grow E-fold. The log reports each
MoE layer's expert loads and dropped share at every validation, and summary.json keeps them for
the whole run (run_report: each layer's share of assignments per expert, and share dropped).

--expert-kernel grouped (dropless, so with --capacity-factor 0) runs the experts as grouped
matmuls without padding to a capacity, where torch._grouped_mm runs on this GPU; elsewhere the
run says why and uses the padded kernel. It prints which kernel ran before training starts.

    python train_gpt2_moe.py --data webmix --experts 4
    python train_gpt2_moe.py --data webmix --experts 8 --top-k 2 --capacity-factor 0
    python train_gpt2_moe.py --data webmix --experts 4 --capacity-factor 0 --expert-kernel grouped
"""

import math
import sys
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from kit.core import hw
from kit.core.errors import UserError
from kit.modeling.model import GPT, gpt_config
from kit.loop.train import Recipe, Trainer, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


# ----- the mixture-of-experts layer
# Mixture-of-experts feed-forward layer: a learned router sends each token to its top-k experts.
#
# Routing: router logits -> softmax over experts -> the k largest. With k = 1 (Switch Transformer)
# the output is gate * expert(x) with gate = the router probability (so the router gets a
# gradient); with k > 1 the k gates are renormalised to sum to 1.
# Capacity: each expert takes at most ceil(capacity_factor * k * N / E) of the N tokens' k
# assignments in a batch (in routing order); the rest are dropped (the token passes through the
# residual only) and counted. capacity_factor 0 means dropless: every expert takes all it is sent
# (the buffer's size then depends on the batch, which a compiled model recompiles for).
# Compute ("padded", the default): assignments are sorted by expert and packed into an
# (E, capacity + 1, d) buffer (the extra slot collects the dropped ones and is discarded), so the
# experts run as two batched matmuls (torch.baddbmm), not a Python loop over tokens, and every
# shape is fixed. "grouped" (dropless only): the sorted assignments, contiguous per expert, run
# through two grouped matmuls (torch._grouped_mm, one GEMM over all experts' groups): no padding
# to a capacity and still fixed shapes, since only the group offsets depend on the batch. It is a
# private PyTorch op whose GPU support depends on the GPU and version: grouped_mm_support() tries
# it once on the device and says why not, and the caller falls back to "padded".
# Balance: the Switch loss E * sum_e f_e * P_e (f_e = share of assignments routed to expert e,
# P_e = mean router probability of e) is 1 when routing is uniform and grows as it concentrates.


class MoEMLP(nn.Module):
    def __init__(self, width: int, n_experts: int, top_k: int = 1, capacity_factor: float = 1.25, hidden: int = None,
                 std: float = 0.02, out_std: float = 0.02, kernel: str = "padded"):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top-k {top_k} must be between 1 and the number of experts ({n_experts})")
        if kernel not in ("padded", "grouped"):
            raise ValueError(f"expert kernel {kernel!r}: padded or grouped")
        if kernel == "grouped" and capacity_factor > 0:
            raise ValueError("the grouped expert kernel is dropless: capacity factor 0")
        hidden = hidden or 4 * width
        self.n_experts, self.top_k, self.capacity_factor, self.kernel = n_experts, top_k, capacity_factor, kernel
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

    def router_logits(self, flat, x):
        """(N, E) scores of each token for each expert; x (B, T, d) is flat before flattening, for routers that
        read the context (train_gpt2_deeponet_moe.py)."""
        return self.router(flat)

    def route(self, flat, x=None):
        """(gates (N, k), experts (N, k), router probabilities (N, E))."""
        probs = F.softmax(self.router_logits(flat, x).float(), dim=-1)
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

    def padded_outputs(self, flat, token, sorted_expert, counts):
        """(each sorted assignment's expert output, whether it was kept): packed per expert up to its capacity."""
        slot = torch.arange(len(token), device=flat.device) - (torch.cumsum(counts, 0) - counts)[sorted_expert]
        capacity = self.capacity(len(token), counts)
        keep = slot < capacity
        slot = torch.where(keep, slot, capacity)  # dropped assignments go to the spare slot
        packed = flat.new_zeros(self.n_experts, capacity + 1, flat.size(-1))
        packed[sorted_expert, slot] = flat[token]
        return self.expert_mlps(packed)[sorted_expert, slot], keep

    def grouped_outputs(self, flat, token, sorted_expert, counts):
        """(each sorted assignment's expert output, None: dropless, nothing to mask): two grouped matmuls
        over the experts' contiguous runs."""
        dtype = compute_dtype(flat)  # the GPU kernels take bf16; autocast may not cast a private op
        ends = torch.cumsum(counts, 0, dtype=torch.int32)
        hidden = torch._grouped_mm(flat[token].to(dtype), self.w_in.to(dtype), offs=ends) + self.b_in.to(dtype)[sorted_expert]
        out = torch._grouped_mm(F.gelu(hidden, approximate="tanh"), self.w_out.to(dtype), offs=ends)
        return out + self.b_out.to(dtype)[sorted_expert], None

    def forward(self, x):
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        gates, experts, probs = self.route(flat, x)
        expert_of = experts.reshape(-1)  # assignment a: token a // k, its (a % k)-th choice
        order = torch.argsort(expert_of, stable=True)  # by expert; routing order kept within one
        sorted_expert, token = expert_of[order], order // self.top_k
        counts = torch.bincount(expert_of, minlength=self.n_experts)
        outputs = self.grouped_outputs if self.kernel == "grouped" else self.padded_outputs
        out, keep = outputs(flat, token, sorted_expert, counts)
        weight = gates.reshape(-1)[order]
        if keep is not None:  # the padded kernel's dropped assignments contribute nothing
            weight = weight * keep
        y = flat.new_zeros(flat.shape).index_add_(0, token, (out * weight[:, None].to(out.dtype)).to(flat.dtype))
        if self.training:
            self.aux_loss = self.balance_loss(counts, probs)
            with torch.no_grad():
                self.load += counts
                self.routed += len(order)
                if keep is not None:
                    self.dropped += (~keep).sum()
        return y.view(shape)

    def balance_loss(self, counts, probs):
        """Switch Transformer's E * sum_e f_e P_e: 1 when uniform, up to E when one expert takes all."""
        f = counts.float() / counts.sum()
        return self.n_experts * (f * probs.mean(0)).sum()


def compute_dtype(x):
    """The dtype matmuls on x run in: autocast's where it is on, else x's."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def grouped_mm_support(device, dtype, compiled: bool = False) -> str:
    """Why torch._grouped_mm cannot serve as the expert kernel on this device and dtype ("" when it
    can): it must exist, run forward and backward, and match per-group matmuls; compiled, it
    takes bf16 only (its shape checks for tracing mirror the CUDA kernel's)."""
    if not hasattr(torch, "_grouped_mm"):
        return f"torch {torch.__version__} has no torch._grouped_mm"
    if compiled and dtype != torch.bfloat16:
        return f"compiled, torch._grouped_mm takes bf16 only, and this run computes in {dtype}"
    try:
        generator = torch.Generator().manual_seed(0)
        a = torch.randn(48, 32, generator=generator).to(device, dtype).requires_grad_()
        b = torch.randn(3, 32, 16, generator=generator).to(device, dtype).requires_grad_()
        ends = torch.tensor([16, 16, 48], dtype=torch.int32, device=device)  # an empty group too
        out = torch._grouped_mm(a, b, offs=ends)
        (out * torch.ones_like(out)).sum().backward()
        expected = torch.cat([a[:16] @ b[0], a[16:16] @ b[1], a[16:] @ b[2]])
        if not torch.allclose(out.float(), expected.float(), atol=5e-2, rtol=2e-2) or b.grad[1].abs().sum() != 0:
            return "torch._grouped_mm ran but disagreed with per-group matmuls"
    except (RuntimeError, NotImplementedError) as error:
        return f"torch._grouped_mm failed on {device} in {dtype}: {str(error).splitlines()[0]}"
    return ""


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    experts: int = field(default=4, metadata={"help": "experts per MoE layer"})
    top_k: int = field(default=1, metadata={"help": "experts per token"})
    capacity_factor: float = field(default=1.25, metadata={"help": "expert capacity = this x k x tokens / experts; 0: dropless"})
    balance_weight: float = field(default=0.01, metadata={"help": "weight of the load-balancing loss"})
    moe_every: int = field(default=1, metadata={"help": "MoE in every N-th block (others keep the dense MLP)"})
    expert_kernel: str = field(default="padded", metadata={"choices": ["padded", "grouped"],
                               "help": "padded: batched matmuls over capacity-sized buffers; grouped: dropless grouped matmuls (needs --capacity-factor 0)"})


class MoEGPT(GPT):
    def __init__(self, config, cfg: Hyperparameters, kernel: str = "padded", layer=None):
        """layer: the MoE layer's class (MoEMLP, or a subclass with another router)."""
        super().__init__(config)
        out_std = 0.02 / math.sqrt(2 * config.n_layer)  # the baseline's residual-projection init
        for i, block in enumerate(self.h):
            if i % cfg.moe_every == cfg.moe_every - 1:
                block.mlp = (layer or MoEMLP)(config.n_embd, cfg.experts, cfg.top_k, cfg.capacity_factor, out_std=out_std, kernel=kernel)
        self.balance_weight = cfg.balance_weight

    def moe_layers(self):
        return [block.mlp for block in self.h if isinstance(block.mlp, MoEMLP)]

    def forward(self, *args, **kwargs):
        self.drop_aux_losses()  # a forward stopped midway (out of memory) left its layers' losses holding its activations
        return super().forward(*args, **kwargs)

    def drop_aux_losses(self) -> list:
        """The layers' balance losses of this forward, no longer held by the layers (each holds the graph behind it)."""
        losses = [layer.aux_loss for layer in self.moe_layers()]
        for layer in self.moe_layers():
            layer.aux_loss = None
        return losses

    def loss(self, h, targets, idx=None):
        loss = super().loss(h, targets, idx)
        if self.training and self.balance_weight:
            loss = loss + self.balance_weight * sum(self.drop_aux_losses())
        return loss

    def flops_per_token(self, seq_len: int) -> int:
        """The baseline's count with each MoE layer's MLP counted k times (the experts a token runs)."""
        from kit.modeling.flops import flops_per_token

        dense = flops_per_token(self, self.config.n_layer, self.config.n_embd, seq_len)
        return dense + sum(6 * layer.top_k * (layer.w_in[0].numel() + layer.w_out[0].numel()) for layer in self.moe_layers())

    def routing_counts(self) -> list:
        """Per MoE layer, over the training steps so far: (each expert's share of assignments, the share dropped for capacity)."""
        return [((layer.load / layer.load.sum().clamp(min=1)).tolist(), (layer.dropped / layer.routed.clamp(min=1)).item())
                for layer in self.moe_layers()]

    def routing_report(self) -> str:
        return " | ".join(f"moe{i}: load " + "/".join(f"{s:.2f}" for s in share) + f" dropped {dropped:.3f}"
                          for i, (share, dropped) in enumerate(self.routing_counts()))


def expert_kernel(cfg: Hyperparameters) -> str:
    """The kernel this run uses, printed with the reason when --expert-kernel grouped cannot run here."""
    if cfg.expert_kernel == "padded":
        return "padded"
    if cfg.capacity_factor > 0:
        raise UserError("--expert-kernel grouped is dropless: add --capacity-factor 0")
    device = hw.pick_device(cfg.device, hw.dist_from_env())  # as the Trainer picks them
    dtype = hw.pick_dtype(cfg.dtype, device)
    why_not = grouped_mm_support(device, dtype, compiled=bool(cfg.compile))
    print(f"expert kernel: padded (dropless), since {why_not}" if why_not else f"expert kernel: grouped matmul (torch._grouped_mm, {dtype})", flush=True)
    return "padded" if why_not else "grouped"


def build_model(cfg: Hyperparameters):
    return MoEGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn), cfg, expert_kernel(cfg))


def before_step(step: int, model: MoEGPT, optimizers, cfg: Hyperparameters) -> None:
    if step and cfg.val_every and step % cfg.val_every == 0:
        print(f"routing at step {step}: {model.routing_report()}")


def run_report(model: MoEGPT) -> dict:
    counts = model.routing_counts()
    return {"moe_load": [[round(s, 4) for s in share] for share, _ in counts], "moe_dropped_share": [round(d, 4) for _, d in counts]}


class MoETrainer(Trainer):
    def run_report(self) -> dict:
        return run_report(self.model)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=before_step, trainer=MoETrainer)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
