"""The baseline with mixture-of-experts feed-forward layers (kit/moe.py).

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

from kit import hw
from kit.errors import UserError
from kit.model import GPT, gpt_config
from kit.moe import MoEMLP, grouped_mm_support
from kit.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


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
    def __init__(self, config, cfg: Hyperparameters, kernel: str = "padded"):
        super().__init__(config)
        out_std = 0.02 / math.sqrt(2 * config.n_layer)  # the baseline's residual-projection init
        for i, block in enumerate(self.h):
            if i % cfg.moe_every == cfg.moe_every - 1:
                block.mlp = MoEMLP(config.n_embd, cfg.experts, cfg.top_k, cfg.capacity_factor, out_std=out_std, kernel=kernel)
        self.balance_weight = cfg.balance_weight

    def moe_layers(self):
        return [block.mlp for block in self.h if isinstance(block.mlp, MoEMLP)]

    def loss(self, h, targets, idx=None):
        loss = super().loss(h, targets, idx)
        if self.training and self.balance_weight:
            loss = loss + self.balance_weight * sum(layer.aux_loss for layer in self.moe_layers())
        return loss

    def flops_per_token(self, seq_len: int) -> int:
        """The baseline's count with each MoE layer's MLP counted k times (the experts a token runs)."""
        from kit.flops import flops_per_token

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


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                before_step=before_step, run_report=run_report)

if __name__ == "__main__":
    sys.exit(main(RECIPE))
