"""Muon: momentum SGD whose update for each weight matrix is orthogonalised.

The update direction G (after Nesterov momentum) is replaced by the nearest semi-orthogonal
matrix U V^T of its SVD G = U S V^T, approximated by a few Newton-Schulz iterations of the odd
quintic p(X) = a X + b (X X^T) X + c (X X^T)^2 X. The coefficients (3.4445, -4.7750, 2.0315)
push small singular values up fast at the price of leaving the result's singular values
spread around 1 (roughly 0.7..1.2) instead of exactly 1, which works as well in practice and
needs only 5 iterations in bf16. Only 2-D weights of hidden layers go to Muon; embeddings,
the output head and scalars go to Adam.
"""

import torch

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)


def newton_schulz(G: torch.Tensor, steps: int = 5, dtype=torch.bfloat16) -> torch.Tensor:
    """Approximately orthogonalise the last two dimensions of G (singular values -> ~1)."""
    a, b, c = NS_COEFFICIENTS
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


class Muon(torch.optim.Optimizer):
    """Orthogonalised Nesterov momentum for 2-D parameters.

    The step for a (rows x cols) matrix is lr * sqrt(max(1, rows / cols)) * orthogonalise(m),
    so tall matrices, whose orthogonalised rows are shorter, take comparable steps.
    """

    def __init__(self, params, lr=0.05, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0):
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay))
        for group in self.param_groups:
            if any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon takes 2-D parameters only; give embeddings, heads and scalars to Adam")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, momentum = group["lr"], group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p.grad))
                buf.lerp_(p.grad, 1 - momentum)
                direction = p.grad.lerp(buf, momentum) if group["nesterov"] else buf
                update = newton_schulz(direction, group["ns_steps"])
                if group["weight_decay"]:
                    p.mul_(1 - lr * group["weight_decay"])
                p.add_(update, alpha=-lr * max(1.0, p.size(0) / p.size(1)) ** 0.5)
