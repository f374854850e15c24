"""Optimizer set-up and learning-rate schedules.

Every param group carries `base_lr`; each step the loop sets lr = base_lr * schedule(step).
A schedule is a function (step, cfg) -> multiplier, so a script can bring its own.

Schedule scaling: the baseline's lengths (700 warmup steps, cosine over 4768 steps) are given
for the reference run of `cfg.reference_steps` steps. With --max-steps N, warmup lasts
round(warmup_steps * N / reference_steps) steps and the cosine ends at step N, so a short run
traces the same curve shape, compressed.
"""

import math

import torch


def adamw(model, lr, betas, eps, weight_decay, fused=False, exclude=()):
    """AdamW with weight decay on matrices (dim >= 2) only: not on biases and norm gains (nor on
    the parameters in exclude, which another optimizer takes)."""
    return torch.optim.AdamW(decay_groups(model, weight_decay, lr, exclude), lr=lr, betas=betas, eps=eps, fused=fused or None,
                             foreach=None if fused else True)


def decay_groups(model, weight_decay: float, lr: float, exclude=()) -> list[dict]:
    """Two param groups: matrices (dim >= 2) with weight decay, biases and gains without
    (leaving out the parameters in exclude, which another optimizer takes)."""
    excluded = {id(p) for p in exclude}
    params = {id(p): p for p in model.parameters() if p.requires_grad and id(p) not in excluded}.values()
    return [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay, "base_lr": lr},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "base_lr": lr},
    ]


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al., 2023, "Symbolic Discovery of Optimization Algorithms").

    update = sign(beta1 * m + (1 - beta1) * g); p <- p * (1 - lr * wd) - lr * update;
    m <- beta2 * m + (1 - beta2) * g. Every coordinate moves by exactly lr, so the learning rate
    is typically 3-10x smaller than AdamW's and the weight decay 3-10x larger; one state
    tensor per parameter instead of Adam's two.
    """

    def __init__(self, params, lr=1e-4, betas=(0.9, 0.99), weight_decay=0.0):
        super().__init__(params, dict(lr=lr, betas=betas, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                m = self.state[p].setdefault("exp_avg", torch.zeros_like(p))
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.sign(m.lerp(p.grad, 1 - beta1)), alpha=-group["lr"])
                m.lerp_(p.grad, 1 - beta2)


class CautiousDecayAdam(torch.optim.Adam):
    """Adam with cautious weight decay per group (the public speedrun record of 2025-12-18 extended it from Muon to
    Adam): a group's `cautious_wd` is the share of each weight it decays per step at its base LR, scaled by the
    square of lr / base_lr (the LR schedule's multiplier, squared, as the public record's lr^2 * wd), and only where
    Adam's own update moves the weight toward zero (update and weight of the same sign). The rest is torch's Adam,
    fused where asked; the decayed groups' weights are copied before its step to find the update's sign."""

    @torch.no_grad()
    def step(self, closure=None):
        decaying = [(p, group["cautious_wd"] * (group["lr"] / group["base_lr"]) ** 2) for group in self.param_groups
                    if group.get("cautious_wd") for p in group["params"] if p.grad is not None]
        before = [p.clone() for p, _ in decaying]
        loss = super().step(closure)
        for (p, decay), old in zip(decaying, before):
            toward_zero = (old - p) * old > 0  # Adam subtracted (old - p): same sign as the weight
            p.addcmul_(old, toward_zero, value=-decay)
        return loss


def scaled_warmup_steps(cfg) -> int:
    return max(1, round(cfg.warmup_steps * cfg.max_steps / cfg.reference_steps)) if cfg.warmup_steps else 0


def warmup_cosine(step: int, cfg) -> float:
    """Linear warmup to 1, then cosine down to cfg.min_lr_frac at cfg.max_steps."""
    warmup = scaled_warmup_steps(cfg)
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, cfg.max_steps - warmup))
    return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * progress))


def linear_to_zero(step: int, max_steps: int, start: float, frac: float) -> float:
    """start at step 0, falling linearly to 0 at frac x max_steps (a schedule for auxiliary loss weights)."""
    end = max(1.0, frac * max_steps)
    return start * max(0.0, 1 - step / end)


def set_learning_rates(optimizers, multiplier: float) -> float:
    """Apply the schedule to every group; return the first group's lr for logging."""
    for opt in optimizers:
        for group in opt.param_groups:
            group["lr"] = group["base_lr"] * multiplier
    return optimizers[0].param_groups[0]["lr"]
