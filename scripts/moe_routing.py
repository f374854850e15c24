"""Where a trained MoE model (train_gpt2_moe.py) sends tokens: expert shares per layer on two
validation sets from different sources, and how much each document keeps to one expert.

    python scripts/moe_routing.py logs/my_moe_run --tokens 1048576

Sets: webmix's validation shard (blogs, Wikipedia, movie reviews) and fineweb_sample (FineWeb
web pages): if experts specialise by source, their shares differ between the two sets. The
documents' concentration is the share of a document's tokens (top-1 choices) that go to its
most used expert, averaged over documents of at least 64 tokens; 1/E would be routing
independent of the document. Writes moe_routing.json next to the run's files.
"""

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit import datasets  # noqa: E402
from kit.errors import UserError, run_cli  # noqa: E402
from kit.loader import validation_batches  # noqa: E402
from kit.modern import document_ids  # noqa: E402
from kit.runs import load_model  # noqa: E402


@torch.no_grad()
def routing_stats(model, batches, device, min_doc_tokens: int = 64) -> dict:
    """Per MoE layer: share of top-1 choices per expert, and the mean per-document concentration."""
    layers = model.moe_layers()
    counts = [torch.zeros(layer.n_experts) for layer in layers]
    concentration = [[] for _ in layers]
    choices = {}
    hooks = [layer.router.register_forward_hook(lambda m, i, out, k=k: choices.__setitem__(k, out.argmax(-1).cpu()))
             for k, layer in enumerate(layers)]
    try:
        for x, _ in batches:
            x = x.to(device)
            model.hidden(x)
            docs = document_ids(x).cpu()
            for k, layer in enumerate(layers):
                top1 = choices[k].view(x.shape)
                counts[k] += torch.bincount(top1.flatten(), minlength=layer.n_experts).float()
                for row in range(x.size(0)):
                    for d in docs[row].unique():
                        picks = top1[row][docs[row] == d]
                        if len(picks) >= min_doc_tokens:
                            concentration[k].append(torch.bincount(picks).max().item() / len(picks))
    finally:
        for hook in hooks:
            hook.remove()
    return {"share": [(c / c.sum()).tolist() for c in counts],
            "doc_concentration": [sum(c) / len(c) if c else None for c in concentration]}


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--tokens", type=int, default=1_048_576, help="tokens of each validation set")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    model, cfg, _ = load_model(args.run_dir, args.device)
    if not hasattr(model, "moe_layers"):
        raise UserError(f"{args.run_dir} is not a train_gpt2_moe.py run")
    files = datasets.resolve(cfg, is_main=False)
    sets = {"val": files.val, **files.extra_val}
    per_batch = max(1, 65_536 // cfg.seq_len)
    results = {name: routing_stats(model, validation_batches(path, args.tokens, cfg.seq_len, per_batch, strict=False), args.device)
               for name, path in sets.items()}
    (Path(args.run_dir) / "moe_routing.json").write_text(json.dumps(results, indent=1))
    lines = []
    for name, stats in results.items():
        for k, (share, conc) in enumerate(zip(stats["share"], stats["doc_concentration"])):
            lines.append(f"{name} moe{k}: shares " + "/".join(f"{s:.3f}" for s in share) + (f" | document concentration {conc:.3f}" if conc else ""))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(run_cli(main))
