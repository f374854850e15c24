"""Where a trained MoE model (train_gpt2_moe.py) sends tokens: expert shares per layer on two
validation sets from different sources, and how much each document keeps to one expert.

    python scripts/moe_routing.py logs/my_moe_run --tokens 1048576

Sets: webmix's validation shard (blogs, Wikipedia, movie reviews) and fineweb_sample (FineWeb
web pages): if experts specialise by source, their shares differ between the two sets. Within a
set, the shares are also split by each document's source as guessed from its text (webmix's shards
carry no labels): "wiki" (a title line, then a blank line: WikiExtractor's layout), "review" (names
movies or films twice or more: the IMDb reviews) and "other" (mostly blogs). Checked on the whole
webmix validation shard against its MANIFEST.json (wiki 983, imdb 3,713, blogs 22,453 documents):
the guess gives 1,025 / 3,488 / 22,636, and of 12 random "review" documents read by hand 9 were
reviews and 3 blog posts about films; so "review" and "other" are each a mix that leans one way,
and the documents the guess puts under each source are printed with the shares. The
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
import re
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.data import datasets  # noqa: E402
from kit.core.errors import UserError, run_cli  # noqa: E402
from kit.data.loader import validation_batches  # noqa: E402
from kit.modeling.modern import EOT, document_ids  # noqa: E402
from kit.data.shards import open_shard  # noqa: E402
from kit.data.tokenizer import gpt2_encoding  # noqa: E402
from kit.tools.runs import load_model  # noqa: E402


SOURCES = ("wiki", "review", "other")
FILM_WORDS = re.compile(r"\b(movie|movies|film|films)\b", re.IGNORECASE)


def guess_source(text: str) -> str:
    """A webmix document's likely source, from its layout and words (see the module's docstring)."""
    title, blank, _ = text.lstrip("\n").partition("\n\n")
    if blank and len(title) < 120 and "\n" not in title and not title.rstrip().endswith((".", "!", "?")):
        return "wiki"
    return "review" if len(FILM_WORDS.findall(text)) >= 2 else "other"


def token_sources(tokens: np.ndarray, decode) -> np.ndarray:
    """The guessed source (an index into SOURCES) of every token: each document, from its
    end-of-text token to the next, labelled from its decoded text (a cut first or last document
    from the part the stream holds)."""
    labels = np.empty(len(tokens), dtype=np.int64)
    starts = [0, *np.flatnonzero(tokens == EOT).tolist(), len(tokens)]
    for a, b in zip(starts[:-1], starts[1:]):
        if b > a:
            labels[a:b] = SOURCES.index(guess_source(decode(tokens[a:b][tokens[a:b] != EOT].tolist())))
    return labels


def source_documents(tokens: np.ndarray, labels: np.ndarray) -> dict:
    """How many documents (end-of-text tokens) the guess put under each source."""
    starts = labels[tokens == EOT]
    return {name: int((starts == k).sum()) for k, name in enumerate(SOURCES)}


@torch.no_grad()
def routing_stats(model, batches, device, min_doc_tokens: int = 64, sources: np.ndarray = None) -> dict:
    """Per MoE layer: share of top-1 choices per expert, and the mean per-document concentration;
    with `sources` (a label per token of the stream the batches walk through in order, as
    token_sources gives), the shares of each source's tokens too."""
    layers = model.moe_layers()
    counts = [torch.zeros(layer.n_experts) for layer in layers]
    by_source = [torch.zeros(len(SOURCES), layer.n_experts) for layer in layers]
    offset = 0
    concentration = [[] for _ in layers]
    choices = {}
    hooks = [layer.router.register_forward_hook(lambda m, i, out, k=k: choices.__setitem__(k, out.argmax(-1).cpu()))
             for k, layer in enumerate(layers)]
    try:
        for x, _ in batches:
            x = x.to(device)
            model.hidden(x)
            docs = document_ids(x).cpu()
            labels = None if sources is None else torch.from_numpy(sources[offset:offset + x.numel()])
            offset += x.numel()
            for k, layer in enumerate(layers):
                top1 = choices[k].view(x.shape)
                counts[k] += torch.bincount(top1.flatten(), minlength=layer.n_experts).float()
                concentration[k] += doc_concentrations(top1, docs, min_doc_tokens)
                if labels is not None:
                    pairs = labels * layer.n_experts + top1.flatten()
                    by_source[k] += torch.bincount(pairs, minlength=len(SOURCES) * layer.n_experts).view(len(SOURCES), -1).float()
    finally:
        for hook in hooks:
            hook.remove()
    stats = {"share": [(c / c.sum()).tolist() for c in counts], "doc_concentration": [mean(c) for c in concentration]}
    if sources is not None:
        stats["share_by_source"] = {name: [shares_of(table[i]) for table in by_source] for i, name in enumerate(SOURCES)}
        stats["tokens_by_source"] = {name: int(by_source[0][i].sum()) for i, name in enumerate(SOURCES)}
    return stats


def shares_of(counts: torch.Tensor):
    return (counts / counts.sum()).tolist() if counts.sum() > 0 else None


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


def validation_paths(cfg) -> dict:
    """{name: shard path}: the run's own validation set and its extra ones."""
    files = datasets.resolve(cfg, is_main=False)
    return {"val": files.val, **files.extra_val}


def validation_sets(cfg, tokens: int, paths: dict = None) -> dict:
    """{name: a function giving that validation set's batches}, for `paths` (default: validation_paths)."""
    per_batch = max(1, 65_536 // cfg.seq_len)
    return {name: (lambda path=path: validation_batches(path, tokens, cfg.seq_len, per_batch, strict=False))
            for name, path in (paths or validation_paths(cfg)).items()}


def stream_sources(path, tokens: int) -> tuple:
    """(token labels, documents per source) of the first `tokens` tokens of a validation shard,
    the stream validation_batches walks through."""
    stream = np.asarray(open_shard(path)[:tokens])
    labels = token_sources(stream, gpt2_encoding().decode)
    return labels, source_documents(stream, labels)


def describe(results: dict) -> str:
    lines = []
    for name, stats in results.items():
        chance = stats.get("chance_doc_concentration") or [None] * len(stats["share"])
        for k, (share, conc, level) in enumerate(zip(stats["share"], stats["doc_concentration"], chance)):
            line = f"{name} moe{k}: shares " + "/".join(f"{s:.3f}" for s in share)
            if conc:
                line += f" | document concentration {conc:.3f}" + (f" (chance {level:.3f})" if level else "")
            lines.append(line)
            for source, per_layer in stats.get("share_by_source", {}).items():
                if per_layer[k] is not None:
                    lines.append(f"  {source} ({stats['tokens_by_source'][source]:,} tokens): " + "/".join(f"{s:.3f}" for s in per_layer[k]))
        if stats.get("source_documents"):
            lines.append(f"{name} documents by guessed source: " + ", ".join(f"{s} {n:,}" for s, n in stats["source_documents"].items()))
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
        paths, results = validation_paths(cfg), {}
        sets = validation_sets(cfg, args.tokens, paths)
        for name, path in paths.items():
            labels, documents = stream_sources(path, args.tokens)
            results[name] = {**routing_stats(model, sets[name](), args.device, sources=labels), "source_documents": documents}
    for name, stats in results.items():
        stats["chance_doc_concentration"] = chance_concentration(sets[name](), stats["share"])
    out.write_text(json.dumps(results, indent=1))
    return describe(results)


if __name__ == "__main__":
    sys.exit(run_cli(main))
