"""Print a markdown table of run directories (their summary.json files).

    python scripts/summarize.py logs/run_a logs/run_b [--baseline logs/run_a] [--steps 4768]

Columns: steady-state ms/step and tokens/s (median of the steps after the first five), MFU,
peak memory, micro-batch, the final validation loss, and the projected training time of a run
of --steps steps at that speed (evaluation excluded).
"""

import argparse
import json
from pathlib import Path


def load(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    summary["run_dir"] = str(run_dir)
    return summary


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict], steps: int, baseline=None) -> str:
    head = "| run | attn | compile | dtype | micro-batch | ms/step | tokens/s | MFU | peak GiB | val loss | projected {steps} steps | vs baseline |"
    lines = [head.format(steps=steps), "|" + "---|" * 12]
    base_tps = baseline.get("steady_tokens_per_s") if baseline else None
    for r in rows:
        ms, tps = r.get("median_step_ms"), r.get("steady_tokens_per_s")
        projected = f"{ms * steps / 3.6e6:.2f} h" if ms else "-"
        ratio = f"{tps / base_tps:.2f}x" if (tps and base_tps) else "-"
        lines.append(
            f"| {Path(r['run_dir']).name} | {r.get('attn')} | {r.get('compile')} | {r.get('dtype')} | {r.get('micro_batch')} | "
            f"{fmt(ms, '.1f')} | {fmt(tps, ',.0f')} | {fmt(r.get('steady_mfu'), '.1%')} | {fmt(r.get('peak_mem_gib'), '.1f')} | "
            f"{fmt(r.get('final_val_loss'), '.4f')} | {projected} | {ratio} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--baseline", help="run directory the ratios are taken against (default: the first)")
    parser.add_argument("--steps", type=int, default=4768)
    args = parser.parse_args(argv)
    rows = [load(Path(r)) for r in args.runs if (Path(r) / "summary.json").exists()]
    if not rows:
        print("no summary.json in the given run directories")
        return 1
    baseline = load(Path(args.baseline)) if args.baseline else rows[0]
    print(table(rows, args.steps, baseline))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
