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


def adamw(model, lr, betas, eps, weight_decay, fused=False):
    """AdamW with weight decay on matrices (dim >= 2) only: not on biases and norm gains."""
    params = {id(p): p for p in model.parameters() if p.requires_grad}.values()
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay, "base_lr": lr},
        {"params": no_decay, "weight_decay": 0.0, "base_lr": lr},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused or None, foreach=None if fused else True)


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
