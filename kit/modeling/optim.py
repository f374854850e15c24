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


def adam_cautious_update(p, grad, exp_avg, exp_avg_sq, beta1: float, beta2: float, step_size, bias2_sqrt, eps, decay):
    """One Adam step of p in place (torch's formula: p -= step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)), plus
    the cautious decay: decay * p, only where that update moves p toward zero. The tensors step_size, bias2_sqrt, eps
    and decay are 0-d, so a compiled update serves every step."""
    exp_avg.lerp_(grad, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
    update = exp_avg / (exp_avg_sq.sqrt() / bias2_sqrt + eps) * step_size
    update = update + decay * p * (update * p > 0)
    p.sub_(update)


class CautiousDecayAdam(torch.optim.Adam):
    """Adam with cautious weight decay per group (the public speedrun record of 2025-12-18 extended it from Muon to
    Adam): a group's `cautious_wd` is the share of each weight it decays per step at its base LR, scaled by the
    square of lr / base_lr (the LR schedule's multiplier, squared, as the public record's lr^2 * wd), and only where
    Adam's update moves the weight toward zero (update and weight of the same sign). Those groups step through one
    update that reads and writes each tensor once (adam_cautious_update, compiled on a GPU); the others are torch's
    Adam, fused where asked. The state has torch's Adam's keys, so checkpoints load either way."""

    compiled_on = ("cuda",)  # devices whose decayed groups step through the compiled update

    def __init__(self, params, **kw):
        super().__init__(params, **kw)
        self._update = adam_cautious_update
        self._scalars = {}  # device -> 0-d tensors (step size, sqrt(1 - beta2^t), eps, decay), refilled per group and step

    def _decayed(self):
        return [(group, p) for group in self.param_groups if group.get("cautious_wd") for p in group["params"] if p.grad is not None]

    def _scalar_tensors(self, device):
        """The 0-d tensors the update reads on this device; the first time on a device of compiled_on, the update
        compiles there (it reads these, not Python numbers, so one graph serves every step)."""
        if device not in self._scalars:
            self._scalars[device] = [torch.zeros((), device=device) for _ in range(4)]
            if device.type in self.compiled_on:
                self._update = torch.compile(adam_cautious_update, dynamic=True, fullgraph=True)  # one graph for every shape
        return self._scalars[device]

    @torch.no_grad()
    def step(self, closure=None):
        decayed = self._decayed()
        grads = [p.grad for _, p in decayed]
        for _, p in decayed:  # torch's Adam skips parameters without a gradient
            p.grad = None
        try:
            loss = super().step(closure)
        finally:
            for (_, p), grad in zip(decayed, grads):
                p.grad = grad
        filled = None  # (group, step count, device) the scalars hold: a group's parameters share them, so one fill a group
        for group, p in decayed:
            t = self._count_step(p)
            scalars = self._scalar_tensors(p.device)
            if filled != (id(group), t, p.device):
                self._fill(scalars, group, t)
                filled = (id(group), t, p.device)
            state = self.state[p]
            # p.detach(): the same storage as a plain tensor, since dynamo keeps a Parameter's shape static (a graph per shape)
            self._update(p.detach(), p.grad, state["exp_avg"], state["exp_avg_sq"], *group["betas"], *scalars)
        return loss

    def _count_step(self, p) -> float:
        """Count this step in p's state (created as torch's Adam would) and return the count."""
        state = self.state[p]
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        if state["step"].device.type != "cpu":  # a fused Adam's checkpoint puts steps on the GPU: read on the host, no sync per step
            state["step"] = state["step"].cpu()
        state["step"] += 1
        return float(state["step"])

    @staticmethod
    def _fill(scalars, group, t: float) -> None:
        beta1, beta2 = group["betas"]
        step_size, bias2_sqrt, eps, decay = scalars
        step_size.fill_(group["lr"] / (1 - beta1 ** t))
        bias2_sqrt.fill_((1 - beta2 ** t) ** 0.5)
        eps.fill_(group["eps"])
        decay.fill_(group["cautious_wd"] * (group["lr"] / group["base_lr"]) ** 2)

    @torch.no_grad()
    def warm_up(self):
        """Compile the decayed groups' update (on a GPU: one graph for any shape, one per pair of betas) on small
        scratch tensors, before the timed steps; parameters and state are not touched."""
        for group in self.param_groups:
            if group.get("cautious_wd") and group["params"]:
                first = group["params"][0]
                scratch = [torch.ones(4, 8, device=first.device, dtype=first.dtype) for _ in range(4)]
                self._update(*scratch, *group["betas"], *self._scalar_tensors(first.device))


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
