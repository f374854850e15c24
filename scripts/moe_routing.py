"""Where a trained MoE model (train_gpt2_moe.py) sends tokens: expert shares per layer on two
validation sets from different sources, and how much each document keeps to one expert.

    python scripts/moe_routing.py logs/my_moe_run --tokens 1048576

Sets: webmix's validation shard (blogs, Wikipedia, movie reviews) and fineweb_sample (FineWeb
web pages): if experts specialise by source, their shares differ between the two sets. The
documents' concentration is the share of a document's tokens (top-1 choices) that go to its
most used expert, averaged over documents of at least 64 tokens. Routing independent of the
document still scores above 1/E (a document's most used expert takes more than its share by
chance), so the chance level is given beside it: the same documents with top-1 choices drawn
independently from each layer's measured shares. Writes moe_routing.json next to the run's files.

    python scripts/moe_routing.py logs/my_moe_run --chance-only   # add the chance level to an earlier
                                                                  # moe_routing.json: needs the data, not the weights
"""

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

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
                concentration[k] += doc_concentrations(top1, docs, min_doc_tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return {"share": [(c / c.sum()).tolist() for c in counts], "doc_concentration": [mean(c) for c in concentration]}


def doc_concentrations(top1, docs, min_doc_tokens: int) -> list:
    """For each document of at least min_doc_tokens in a batch: the share of its tokens' top-1 choices
    that go to its most used expert."""
    found = []
    for row in range(top1.size(0)):
        for d in docs[row].unique():
            picks = top1[row][docs[row] == d]
            if len(picks) >= min_doc_tokens:
                found.append(torch.bincount(picks).max().item() / len(picks))
    return found


def chance_concentration(batches, shares: list, min_doc_tokens: int = 64, seed: int = 0) -> list:
    """Per layer: the document concentration of routing that ignores the document, i.e. top-1
    choices drawn independently from that layer's shares over the same documents."""
    generator = torch.Generator().manual_seed(seed)
    found = [[] for _ in shares]
    for x, _ in batches:
        docs = document_ids(x)
        for k, share in enumerate(shares):
            drawn = torch.multinomial(torch.tensor(share), x.numel(), replacement=True, generator=generator).view(x.shape)
            found[k] += doc_concentrations(drawn, docs, min_doc_tokens)
    return [mean(c) for c in found]


def mean(values: list):
    return sum(values) / len(values) if values else None


def validation_sets(cfg, tokens: int) -> dict:
    """{name: a function giving that validation set's batches}: the run's own set and its extra ones."""
    files = datasets.resolve(cfg, is_main=False)
    per_batch = max(1, 65_536 // cfg.seq_len)
    return {name: (lambda path=path: validation_batches(path, tokens, cfg.seq_len, per_batch, strict=False))
            for name, path in {"val": files.val, **files.extra_val}.items()}


def describe(results: dict) -> str:
    lines = []
    for name, stats in results.items():
        chance = stats.get("chance_doc_concentration") or [None] * len(stats["share"])
        for k, (share, conc, level) in enumerate(zip(stats["share"], stats["doc_concentration"], chance)):
            line = f"{name} moe{k}: shares " + "/".join(f"{s:.3f}" for s in share)
            if conc:
                line += f" | document concentration {conc:.3f}" + (f" (chance {level:.3f})" if level else "")
            lines.append(line)
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--tokens", type=int, default=1_048_576, help="tokens of each validation set")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--chance-only", action="store_true", help="add the chance level to the run's moe_routing.json (no weights needed)")
    args = parser.parse_args(argv)
    run_dir = Path(args.run_dir)
    out = run_dir / "moe_routing.json"
    if args.chance_only:
        if not out.exists() or not (run_dir / "config.json").exists():
            raise UserError(f"--chance-only needs {out} and {run_dir / 'config.json'}")
        results = json.loads(out.read_text())
        sets = validation_sets(SimpleNamespace(**json.loads((run_dir / "config.json").read_text())), args.tokens)
    else:
        model, cfg, _ = load_model(run_dir, args.device)
        if not hasattr(model, "moe_layers"):
            raise UserError(f"{run_dir} is not a train_gpt2_moe.py run")
        sets = validation_sets(cfg, args.tokens)
        results = {name: routing_stats(model, batches(), args.device) for name, batches in sets.items()}
    for name, stats in results.items():
        stats["chance_doc_concentration"] = chance_concentration(sets[name](), stats["share"])
    out.write_text(json.dumps(results, indent=1))
    return describe(results)


if __name__ == "__main__":
    sys.exit(run_cli(main))
