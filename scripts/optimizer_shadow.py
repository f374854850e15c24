"""Two optimizers of train_gpt2_optimizers.py on the same gradients: how far apart are their updates?

    python scripts/optimizer_shadow.py --data-file data/webmix/webmix_train_000001.bin --b "--optimizer adamw8bit"
    python scripts/optimizer_shadow.py --data-file data/webmix/webmix_train_000001.bin --b "--optimizer lion" -- --lr 6e-4

The model trains with optimizer A (default: the baseline's AdamW, `--optimizer adamw`). At every
step a shadow copy, set to the model's weights, takes optimizer B's step on the same clipped
gradients, so B's state follows the same gradient history while the trajectory stays A's. Over the
last --window steps, per kind of parameter (token embedding and tied head, positions, matrices,
biases and gains), it prints the norm of B's updates over A's and their cosine. A ratio near 1 and a
cosine near 1 mean B takes A's steps: then a loss gap between the two in training runs is not the
update rule. Flags after `--` go to both configurations (the script's own: model size, --lr, ...);
each step takes --batch-seqs sequences of --seq-len tokens from the shard, in order.
"""

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.core import hw  # noqa: E402
from kit.core.config import parse_config  # noqa: E402
from kit.core.errors import run_cli  # noqa: E402
from kit.data.loader import validation_batches  # noqa: E402
from kit.modeling.optim import set_learning_rates, warmup_cosine  # noqa: E402

import train_gpt2_optimizers as script  # noqa: E402


def parameter_kind(name: str, param: torch.Tensor) -> str:
    if "wte" in name:
        return "embedding (tied head)"
    if "wpe" in name:
        return "positions"
    return "matrices" if param.dim() >= 2 else "biases/gains"


def shadow_steps(cfg_a, cfg_b, data, steps: int, window: int, device, dtype) -> dict:
    """{kind: {"ratio": |update B| / |update A|, "cosine": cos(update A, update B)}} over the last `window` steps."""
    torch.manual_seed(cfg_a.seed)
    model = script.RECIPE.build_model(cfg_a).to(device)
    shadow = script.RECIPE.build_model(cfg_a).to(device)
    shadow.load_state_dict(model.state_dict())
    opt_a, opt_b = script.build_optimizers(model, cfg_a), script.build_optimizers(shadow, cfg_b)
    names = [n for n, _ in model.named_parameters()]
    sums = {}
    for step, (x, y) in zip(range(steps), data):
        shadow.load_state_dict(model.state_dict())
        set_learning_rates(opt_a, warmup_cosine(step, cfg_a))
        set_learning_rates(opt_b, warmup_cosine(step, cfg_b))
        with hw.autocast(device, dtype):
            loss = model(x.to(device), y.to(device))
        loss.backward()
        if cfg_a.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg_a.grad_clip)
        for p, q in zip(model.parameters(), shadow.parameters()):
            q.grad = None if p.grad is None else p.grad.clone()
        before = [p.detach().clone() for p in model.parameters()]
        for opt in (*opt_a, *opt_b):
            opt.step()
            opt.zero_grad(set_to_none=True)
        if step >= steps - window:
            for name, p, q, b in zip(names, model.parameters(), shadow.parameters(), before):
                a_step, b_step = (p.detach() - b).float().flatten(), (q.detach() - b).float().flatten()
                s = sums.setdefault(parameter_kind(name, p), [0.0, 0.0, 0.0])
                s[0] += float(a_step @ a_step)
                s[1] += float(b_step @ b_step)
                s[2] += float(a_step @ b_step)
        print(f"step {step + 1}/{steps} | loss {loss.item():.4f}", flush=True)
    return {kind: {"ratio": math.sqrt(bb / aa) if aa else None, "cosine": ab / math.sqrt(aa * bb) if aa and bb else None}
            for kind, (aa, bb, ab) in sums.items()}


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", required=True, help="a token shard (e.g. data/webmix/webmix_train_000001.bin)")
    parser.add_argument("--a", default="--optimizer adamw", help="optimizer A's flags (it trains the model)")
    parser.add_argument("--b", required=True, help="optimizer B's flags (the shadow)")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--window", type=int, default=10, help="the last steps the ratios are taken over")
    parser.add_argument("--batch-seqs", type=int, default=8)
    parser.add_argument("--out", help="write the figures to this JSON file")
    args, common = parser.parse_known_args(argv)
    common = [w for w in common if w != "--"]
    cfg_a, _ = parse_config(script.Hyperparameters, [*common, *shlex.split(args.a), "--max-steps", str(args.steps)])
    cfg_b, _ = parse_config(script.Hyperparameters, [*common, *shlex.split(args.b), "--max-steps", str(args.steps)])
    device = hw.pick_device(cfg_a.device, hw.Dist())
    dtype = hw.pick_dtype(cfg_a.dtype, device)
    data = validation_batches(args.data_file, args.steps * args.batch_seqs * cfg_a.seq_len, cfg_a.seq_len, args.batch_seqs)  # consecutive batches
    figures = shadow_steps(cfg_a, cfg_b, data, args.steps, min(args.window, args.steps), device, dtype)
    lines = [f"{args.b!r} against {args.a!r}, same gradients, last {min(args.window, args.steps)} of {args.steps} steps:",
             "| parameters | update norm B / A | cosine |", "|---|---|---|"]
    lines += [f"| {kind} | {f['ratio']:.3f} | {f['cosine']:.4f} |" for kind, f in figures.items()]
    if args.out:
        Path(args.out).write_text(json.dumps({"a": args.a, "b": args.b, "steps": args.steps, "common": common, "figures": figures}, indent=1) + "\n")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
