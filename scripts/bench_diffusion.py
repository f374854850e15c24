"""Diffusion against autoregressive generation: speed and sample quality, as one trade-off.

    python scripts/bench_diffusion.py --diffusion logs/<diffusion run> --autoregressive logs/<baseline run> \\
        --judge logs/<speedrun run> --out logs/bench_diffusion [--steps 16,32,64,128] [--batches 1,64] [--lengths 128,512]

For each new-token length and batch: the autoregressive model (KV-cached: static on CUDA, else
paged; one forward per token) and the diffusion model at each --steps (forward passes for the whole
continuation; --unmask, --block-len), all sampling at --temperature from a document start. Speed:
new tokens per second of generation (the median of --repeats timed runs after an untimed one).
Quality, from --samples continuations per length: generative perplexity, exp of the mean loss of the
samples under the --judge model (a stronger autoregressive model, e.g. the record script's run), and
distinct-n (unique n-grams / n-grams, n = 1..4; low values mean repetition). Both models sample the
same way, so their numbers compare. Writes bench_diffusion.json, .md and tradeoff.png into --out;
`--replot OUT/bench_diffusion.json` draws the table and plot again from the saved numbers.
"""

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.core.errors import UserError, run_cli  # noqa: E402
from kit.data.tokenizer import EOT  # noqa: E402
from kit.tools.inference import auto_cache, generate  # noqa: E402
from kit.tools.runs import load_model  # noqa: E402


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int):
    """(the output of the last call, the median seconds of `repeats` calls after an untimed one)."""
    out = fn()
    times = []
    for _ in range(repeats):
        synchronize(device)
        t0 = time.perf_counter()
        out = fn()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return out, statistics.median(times)


def autoregressive_sampler(model, device: str, temperature: float, seed: int):
    cache = auto_cache(model, device)

    def run(batch: int, new_tokens: int) -> torch.Tensor:
        outputs = generate(model, [[EOT]] * batch, new_tokens, cache=cache, temperature=temperature, seed=seed)
        return torch.tensor(outputs, device=device)
    return run, cache


def diffusion_sampler(model, module, device: str, steps: int, unmask: str, block_len: int, temperature: float, seed: int):
    def run(batch: int, new_tokens: int) -> torch.Tensor:
        prompt = torch.full((batch, 1), EOT, dtype=torch.long, device=device)
        return module.sample(model, prompt, new_tokens, steps, unmask, block_len, temperature, seed)
    return run


@torch.no_grad()
def generative_perplexity(judge, samples: torch.Tensor) -> float:
    """exp(mean loss of the samples after a document start) under the judge model."""
    x = torch.cat([torch.full_like(samples[:, :1], EOT), samples[:, :-1]], dim=1)
    return float(torch.exp(judge(x, samples)))


def distinct_n(samples: torch.Tensor, n: int) -> float:
    grams = [tuple(row[i : i + n]) for row in samples.tolist() for i in range(len(row) - n + 1)]
    return len(set(grams)) / max(1, len(grams))


def measure(label: str, sampler, judge, args, lengths, batches) -> list:
    rows = []
    for new_tokens in lengths:
        for batch in batches:
            out, seconds = timed(lambda: sampler(batch, new_tokens), args.device, args.repeats)
            rows.append({"model": label, "new_tokens": new_tokens, "batch": batch, "seconds": seconds, "tokens_per_s": batch * new_tokens / seconds})
        samples = sampler(args.samples, new_tokens)
        quality = {"gen_ppl": generative_perplexity(judge, samples), **{f"distinct_{n}": distinct_n(samples, n) for n in (1, 2, 3, 4)}}
        for row in rows:
            if row["new_tokens"] == new_tokens and row["model"] == label:
                row.update(quality)
        print(f"{label}, {new_tokens} tokens: gen ppl {quality['gen_ppl']:.1f}, distinct-4 {quality['distinct_4']:.3f}, "
              + ", ".join(f"batch {r['batch']}: {r['tokens_per_s']:,.0f} tokens/s" for r in rows if r["new_tokens"] == new_tokens), flush=True)
    return rows


def table(rows) -> str:
    lines = ["| model | new tokens | batch | tokens/s | generative perplexity | distinct-1 | distinct-2 | distinct-4 |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['new_tokens']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['gen_ppl']:.1f} | {r['distinct_1']:.3f} | "
              f"{r['distinct_2']:.3f} | {r['distinct_4']:.3f} |" for r in rows]
    return "\n".join(lines)


def plot(rows, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted({(r["new_tokens"], r["batch"]) for r in rows})
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 4), squeeze=False)
    for ax, (length, batch) in zip(axes[0], keys):
        chosen = [r for r in rows if (r["new_tokens"], r["batch"]) == (length, batch)]
        diffusion = sorted((r for r in chosen if r["model"] != "autoregressive"), key=lambda r: r["tokens_per_s"])
        ax.plot([r["tokens_per_s"] for r in diffusion], [r["gen_ppl"] for r in diffusion], "o-", label="diffusion (steps, distinct-4)")
        for r in diffusion:  # a low perplexity from repeated tokens shows in distinct-4
            ax.annotate(f"{r['model'].split()[-1]} ({r['distinct_4']:.2f})", (r["tokens_per_s"], r["gen_ppl"]), fontsize=7)
        for r in chosen:
            if r["model"] == "autoregressive":
                ax.plot([r["tokens_per_s"]], [r["gen_ppl"]], "s", color="black", label="autoregressive (distinct-4)")
                ax.annotate(f"({r['distinct_4']:.2f})", (r["tokens_per_s"], r["gen_ppl"]), fontsize=7)
        ax.set(xscale="log", yscale="log", xlabel="generated tokens/s", ylabel="generative perplexity (judge)", title=f"{length} tokens, batch {batch}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def numbers(text: str, flag: str) -> list:
    try:
        values = [int(v) for v in text.split(",") if v]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UserError(f"{flag} {text!r}: positive whole numbers separated by commas")
    return values


def replot(bench_json: Path) -> str:
    """bench_diffusion.md and tradeoff.png again from a saved bench_diffusion.json, beside it."""
    rows = json.loads(bench_json.read_text())["rows"]
    (bench_json.parent / "bench_diffusion.md").write_text(table(rows) + "\n")
    plot(rows, bench_json.parent / "tradeoff.png")
    return f"{len(rows)} rows drawn again into {bench_json.parent}"


def main(argv=None) -> str:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--replot"] and len(argv) == 2:  # python scripts/bench_diffusion.py --replot DIR/bench_diffusion.json
        return replot(Path(argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--diffusion", required=True, help="run directory of train_gpt2_diffusion.py")
    parser.add_argument("--autoregressive", required=True, help="run directory of an autoregressive script trained on the same tokens")
    parser.add_argument("--judge", required=True, help="run directory of the model that scores the samples")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", default="16,32,64,128")
    parser.add_argument("--batches", default="1,64")
    parser.add_argument("--lengths", default="128,512")
    parser.add_argument("--samples", type=int, default=64, help="continuations per length for the quality numbers")
    parser.add_argument("--unmask", choices=["confidence", "random"], default="confidence")
    parser.add_argument("--block-len", type=int, default=0)
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    steps, batches, lengths = (numbers(text, flag) for text, flag in ((args.steps, "--steps"), (args.batches, "--batches"), (args.lengths, "--lengths")))
    diffusion, _, module = load_model(args.diffusion, args.device)
    if not isinstance(diffusion, getattr(module, "DiffusionGPT", ())):
        raise UserError(f"{args.diffusion} is not a run of train_gpt2_diffusion.py")
    autoregressive, _, _ = load_model(args.autoregressive, args.device)
    judge, _, _ = load_model(args.judge, args.device)
    dtype = torch.bfloat16 if args.device.startswith("cuda") else torch.float32
    with torch.autocast(args.device.split(":")[0], dtype=dtype, enabled=dtype != torch.float32):
        ar_sampler, cache = autoregressive_sampler(autoregressive, args.device, args.temperature, args.seed)
        rows = measure("autoregressive", ar_sampler, judge, args, lengths, batches)
        for s in steps:
            sampler = diffusion_sampler(diffusion, module, args.device, s, args.unmask, args.block_len, args.temperature, args.seed)
            rows += measure(f"diffusion {s}", sampler, judge, args, lengths, batches)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    header = {"device": args.device, "cache": cache, "unmask": args.unmask, "block_len": args.block_len, "temperature": args.temperature,
              "samples": args.samples, "runs": {"diffusion": args.diffusion, "autoregressive": args.autoregressive, "judge": args.judge}}
    (out / "bench_diffusion.json").write_text(json.dumps({**header, "rows": rows}, indent=1))
    (out / "bench_diffusion.md").write_text(table(rows) + "\n")
    plot(rows, out / "tradeoff.png")
    return f"{len(rows)} rows into {out} (autoregressive cache: {cache})"


if __name__ == "__main__":
    sys.exit(run_cli(main))
