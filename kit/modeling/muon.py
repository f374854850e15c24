"""Muon: momentum SGD whose update for each weight matrix is orthogonalised.

The update direction G (after Nesterov momentum) is replaced by the nearest semi-orthogonal
matrix U V^T of its SVD G = U S V^T, approximated by a few Newton-Schulz iterations of the odd
quintic p(X) = a X + b (X X^T) X + c (X X^T)^2 X. The coefficients (3.4445, -4.7750, 2.0315)
push small singular values up fast at the price of leaving the result's singular values
spread around 1 (roughly 0.7..1.2) instead of exactly 1, which works as well in practice and
needs only 5 iterations in bf16. Only 2-D weights of hidden layers go to Muon; embeddings,
the output head and scalars go to Adam.
row_beta > 0 (NorMuon, Li et al. 2025, arXiv 2510.05491) also keeps, per neuron, an exponential
average of the orthogonalised update's mean square and divides each neuron's update by its root,
so that no neuron's update dominates; here the result is rescaled to the Frobenius norm of the
orthogonalised update, so lr keeps its meaning. A neuron is a row of a square or tall matrix and a
column of a wide one (the public record's axis since 2025-12-11: the MLP's 768 x 3072 output
projection, which it stores transposed, normalises per column).
cautious_wd > 0: cautious weight decay (Chen et al. 2025, arXiv 2510.12402), tied to the LR
schedule as in the public record of 2025-11-10: each element whose update already pushes it
towards zero also decays by lr * cautious_wd times the step's size (so the decay falls with lr^2).
coefficients="polar" uses a different quintic for each of the 5 iterations instead (Polar
Express, Amsel et al. 2025, arXiv 2505.16932, computed for 5 iterations with a 2% safety
margin on the normalisation): the singular values land in a tighter band (about 0.86..1.14
for the hidden matrices here, against 0.68..1.15).
"""

import torch
import torch.distributed as dist

NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
POLAR_EXPRESS_COEFFICIENTS = (  # one (a, b, c) per iteration, from the paper's construction
    (8.156554524902461, -22.48329292557795, 15.878769915207462),
    (4.042929935166739, -2.808917465908714, 0.5000178451051316),
    (3.8916678022926607, -2.772484153217685, 0.5060648178503393),
    (3.285753657755655, -2.3681294933425376, 0.46449024233003106),
    (2.3465413258596377, -1.7097828382687081, 0.42323551169305323),
)


def newton_schulz(G: torch.Tensor, steps: int = 5, dtype=torch.bfloat16, coefficients: str = "quintic") -> torch.Tensor:
    """Approximately orthogonalise the last two dimensions of G (singular values -> ~1)."""
    if coefficients == "polar":
        schedule, margin = POLAR_EXPRESS_COEFFICIENTS[:steps], 1.02
    else:
        schedule, margin = [NS_COEFFICIENTS] * steps, 1.0
    X = G.to(dtype)
    tall = X.size(-2) > X.size(-1)
    if tall:  # iterate on the wide orientation: X X^T is then the smaller Gram matrix
        X = X.mT
    X = X / (X.norm(dim=(-2, -1), keepdim=True) * margin + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for a, b, c in schedule:
        A = X @ X.mT
        X = a * X + (b * A + c * A @ A) @ X
    return (X.mT if tall else X).to(G.dtype)


def compiled_newton_schulz():
    """newton_schulz compiled once per shape (CUDA): the five iterations fuse into a few kernels."""
    global _COMPILED
    if _COMPILED is None:
        _COMPILED = torch.compile(newton_schulz, dynamic=False)
    return _COMPILED


_COMPILED = None


class Muon(torch.optim.Optimizer):
    """Orthogonalised Nesterov momentum for 2-D parameters.

    The step for a (rows x cols) matrix is lr * sqrt(max(1, rows / cols)) * orthogonalise(m),
    so tall matrices, whose orthogonalised rows are shorter, take comparable steps; a group with
    tall_scale=False drops that factor (lr * orthogonalise(m) for every shape).

    A param group may set update_scale=c: its steps are c times as long, its weight decay as the group lr
    alone gives (the public record line steps the MLP's output matrices at 2x, their decay unchanged).

    A param group may set split=k: its matrices are k matrices stacked along the rows (a fused
    QKV projection: k=3), each orthogonalised and scaled on its own, as if they were separate
    parameters; or split=(r1, r2, ...): matrices of r1, r2, ... rows (Q and K by pairs of heads, V
    whole: the public record of 2026-04-08), which must share their tall-matrix factor. Matrices of one shape step together: momentum, orthogonalisation, NorMuon and the
    update each run once on the batch; under torch.distributed each rank orthogonalises its share
    of that batch and the results are gathered.
    """

    def __init__(self, params, lr=0.05, momentum=0.95, nesterov=True, ns_steps=5, weight_decay=0.0, split=1, coefficients="quintic",
                 tall_scale=True, row_beta=0.0, cautious_wd=0.0, update_scale=1.0):
        if coefficients not in ("quintic", "polar"):
            raise ValueError(f"coefficients must be quintic or polar, not {coefficients!r}")
        self.coefficients = coefficients
        if not 0.0 <= row_beta < 1.0:
            raise ValueError(f"row_beta must be in [0, 1), not {row_beta}")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, ns_steps=ns_steps, weight_decay=weight_decay, split=split,
                                         tall_scale=tall_scale, row_beta=row_beta, cautious_wd=cautious_wd, update_scale=update_scale))
        for group in self.param_groups:
            if any(p.dim() != 2 for p in group["params"]):
                raise ValueError("Muon takes 2-D parameters only; give embeddings, heads and scalars to Adam")
            split = group["split"]
            if isinstance(split, int) and any(p.size(0) % split for p in group["params"]):
                raise ValueError(f"split={split} does not divide the rows of every matrix in its group")
            if not isinstance(split, int):
                if any(sum(split) != p.size(0) for p in group["params"]):
                    raise ValueError(f"split={split}: its rows add up to {sum(split)}, not to the rows of every matrix in its group")
                if group["tall_scale"] and len({self.tall_factor(group, rows, p.size(1)) for rows in split for p in group["params"]}) > 1:
                    raise ValueError(f"split={split}: matrices of one parameter must share the tall-matrix factor (rows <= columns)")

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            by_shape = {}
            for p in group["params"]:
                if p.grad is not None:
                    by_shape.setdefault(p.shape, []).append(p)
            for shape, params in by_shape.items():
                self.step_matrices(group, shape, params)

    def step_matrices(self, group, shape, params):
        """One step for the group's matrices of one shape, as a batch: a few kernels for all of them
        instead of a few per matrix (per-kernel launch costs dominate a small model's optimizer step)."""
        directions = torch.stack(self.momentum_directions(params, group))
        if not isinstance(group["split"], int):
            return self.step_row_chunks(group, shape, params, directions)
        rows, cols = shape[0] // group["split"], shape[1]
        updates = self.orthogonalise_shared(directions.view(len(params), group["split"], rows, cols), group["ns_steps"])
        if group["row_beta"]:
            updates = self.row_normalised(params, updates, group["row_beta"])
        self.apply_updates(params, updates.view(len(params), *shape), group, rows, cols)

    def step_row_chunks(self, group, shape, params, directions):
        """step_matrices for split=(r1, r2, ...): the chunks of each row count orthogonalised (and row-normalised,
        with state of their own) as one batch, then put back in place."""
        chunks, cols = directions.split(list(group["split"]), dim=1), shape[1]
        updates = [None] * len(chunks)
        for rows, positions in self.row_classes(group["split"]):
            batch = self.orthogonalise_shared(torch.stack([chunks[i] for i in positions], dim=1), group["ns_steps"])
            if group["row_beta"]:
                batch = self.row_normalised(params, batch, group["row_beta"], state=f"row_second_moment_{rows}")
            for j, i in enumerate(positions):
                updates[i] = batch[:, j]
        self.apply_updates(params, torch.cat(updates, dim=1), group, group["split"][0], cols)

    @staticmethod
    def row_classes(split) -> list:
        """[(rows, positions of the chunks of that many rows)] of a split=(r1, r2, ...)."""
        return [(rows, [i for i, r in enumerate(split) if r == rows]) for rows in sorted(set(split))]

    @staticmethod
    def tall_factor(group, rows: int, cols: int) -> float:
        return max(1.0, rows / cols) ** 0.5 if group["tall_scale"] else 1.0

    @torch.no_grad()
    def warm_up(self) -> None:
        """Run the orthogonalisation once per batched shape on zeros, so that its compilation
        (CUDA) happens before the timed steps; parameters and state are not touched."""
        for group in self.param_groups:
            counts = {}
            for p in group["params"]:
                counts[p.shape] = counts.get(p.shape, 0) + 1
            first = group["params"][0]
            split = group["split"]
            for shape, n in counts.items():
                share = rank_share(n)  # the batch one rank orthogonalises (orthogonalise_shared)
                batches = [(split, shape[0] // split)] if isinstance(split, int) else [(len(p), rows) for rows, p in self.row_classes(split)]
                for count, rows in batches:
                    zeros = torch.zeros(share, count, rows, shape[1], device=first.device, dtype=first.dtype)
                    self.orthogonalise(zeros, group["ns_steps"])

    def orthogonalise(self, stacked, steps):
        if stacked.is_cuda:
            return compiled_newton_schulz()(stacked, steps, coefficients=self.coefficients)
        # the CPU (tests, smoke runs) gains nothing from bf16 and would lose reproducibility across reduction orders
        return newton_schulz(stacked, steps, dtype=torch.float32, coefficients=self.coefficients)

    def orthogonalise_shared(self, stacked, steps):
        """orthogonalise, with the work split across ranks under torch.distributed: every rank holds the
        same averaged gradients and so the same momentum, so each orthogonalises its share of the matrices
        (the last share padded with zeros) and the shares are gathered, instead of every rank doing all."""
        world = world_size()
        if world == 1:
            return self.orthogonalise(stacked, steps)
        n, share = stacked.size(0), rank_share(stacked.size(0))
        padded = torch.cat([stacked, stacked.new_zeros(share * world - n, *stacked.shape[1:])]) if share * world > n else stacked
        rank = dist.get_rank()
        mine = self.orthogonalise(padded[rank * share:(rank + 1) * share], steps).contiguous()
        gathered = torch.empty_like(padded)
        dist.all_gather(list(gathered.chunk(world)), mine)
        return gathered[:n]

    def state_tensor(self, p, name, like):
        """The state tensor `name` of p, zeros shaped like `like` the first time."""
        state = self.state[p]
        if name not in state:
            state[name] = torch.zeros_like(like)
        return state[name]

    def momentum_directions(self, params, group):
        """Each matrix's momentum buffer updated with its gradient; the Nesterov directions (or the buffers)."""
        grads = [p.grad for p in params]
        buffers = [self.state_tensor(p, "momentum_buffer", p.grad) for p in params]
        torch._foreach_lerp_(buffers, grads, 1 - group["momentum"])
        return torch._foreach_lerp(grads, buffers, group["momentum"]) if group["nesterov"] else buffers

    def apply_updates(self, params, updates, group, rows, cols):
        """Weight decay, cautious weight decay and the step, on the stacked matrices, written back."""
        lr = group["lr"]
        step_size = lr * self.tall_factor(group, rows, cols)
        weights = torch.stack(params)
        if group["weight_decay"]:
            weights.mul_(1 - lr * group["weight_decay"])
        if group["cautious_wd"]:  # where a weight and its update agree in sign, w -= step_size * w * lr * cautious_wd
            weights.sub_(weights * (updates * weights >= 0), alpha=step_size * lr * group["cautious_wd"])
        weights.add_(updates, alpha=-step_size * group["update_scale"])
        torch._foreach_copy_(params, list(weights.unbind(0)))

    def row_normalised(self, params, update, beta, state="row_second_moment"):
        """update (matrices, split, rows, cols) with each neuron (a row, or a column of a wide matrix) divided
        by the root of its running mean square, rescaled to update's Frobenius norm per split matrix (NorMuon)."""
        update = update.float()
        mean_square = update.square().mean(dim=-1 if update.size(-2) >= update.size(-1) else -2, keepdim=True)
        moments = [self.state_tensor(p, state, mean_square[0]) for p in params]
        torch._foreach_lerp_(moments, list(mean_square.unbind(0)), 1 - beta)
        normalised = update / (torch.stack(moments).sqrt() + 1e-10)
        scale = update.norm(dim=(-2, -1), keepdim=True) / (normalised.norm(dim=(-2, -1), keepdim=True) + 1e-10)
        return (normalised * scale).to(params[0].dtype)


def world_size() -> int:
    """Ranks that share the orthogonalisation: 1 outside torch.distributed."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank_share(n: int) -> int:
    """Matrices of a batch of n that one rank orthogonalises (the last rank's share padded)."""
    return -(-n // world_size())
