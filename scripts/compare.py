"""Compare run directories: a markdown table, loss curves, and the regenerated results pages.

    python scripts/compare.py logs/base logs/variant [--baseline logs/base] [--out reports/x]
    python scripts/compare.py logs/a logs/b --throughput        # speed columns instead of time-to-target
    python scripts/compare.py logs/speed_* --step-cost --windows 21-60,61-90,91-120   # speed runs one after the other
    python scripts/compare.py --records                         # rewrite records/RESULTS.md and README's results
    python scripts/compare.py --paired logs/base logs/a logs/b [--windows 300-399,400-499]   # same seed and data order
    python scripts/compare.py --screen-margins records/*/*/ --target 3.64   # what each --val-screen-margin would skip

The table has, per run: script, flags, target, whether it was reached, time to target (training
and wall), tokens to target, final validation loss (main set and fineweb_sample), steady tokens/s,
MFU, peak memory, and ratios to the baseline row (speed, and time to target when both reached).
With --out, the table goes to compare.md and the curves to loss_vs_time.png / loss_vs_tokens.png.
--paired compares runs that took the same batches as the first at every step (an ablation at one
seed and data order): the mean per-step difference of the training loss over windows of steps, and
the validation screens they share; it reads metrics.jsonl alone, so runs cut short count too.
--screen-margins reads every full validation that followed a screen (--val-screen-tokens) and shows
how far the screen read above the full loss, and which full validations and crossings each margin
would have skipped.
"""

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.tools import report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="*", help="run directories (each with summary.json)")
    parser.add_argument("--baseline", help="the run the ratios are taken against (default: the first)")
    parser.add_argument("--throughput", action="store_true", help="speed table (ms/step, MFU, projected time)")
    parser.add_argument("--step-cost", action="store_true", help="speed runs of one machine, in the order given: median step, "
                        "--windows medians, step 1, tokens/s against the mean of the runs without a switch of their own")
    parser.add_argument("--out", help="folder for compare.md and the PNG plots")
    parser.add_argument("--target", type=float, help="target line on the plots (default: the runs' target)")
    parser.add_argument("--records", action="store_true", help="regenerate records/RESULTS.md and the README results section")
    parser.add_argument("--records-dir", default=str(REPO / "records"))
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    parser.add_argument("--paired", action="store_true", help="the runs took the first one's batches at every step: "
                        "their training-loss differences over --windows and the validation screens they share")
    parser.add_argument("--windows", default="", help="for --paired: steps FIRST-LAST, comma-separated (default: "
                        "five equal windows over the first run's steps)")
    parser.add_argument("--spread", action="store_true", help="repeats of one recipe (other seeds and data orders): the median, "
                        "lowest, highest and range of the time and tokens to the target, the crossing step and losses")
    parser.add_argument("--wall", action="store_true", help="where each run's wall time went: imports, start-up, warm-up by part "
                        "and phase, training, screens, full validations, the rest")
    parser.add_argument("--screen-margins", action="store_true", help="the runs' screened validations against --margins "
                        "(needs --target)")
    parser.add_argument("--margins", default="0.002,0.0025,0.003,0.004", help="for --screen-margins: comma-separated")
    parser.add_argument("--skips", default="", help="for --screen-margins: also replay the runs' checks under each margin and "
                        "these --val-screen-skip shares, e.g. 0.5,0.75,1")
    args = parser.parse_args(argv)
    if args.screen_margins:
        if args.target is None:
            parser.error("--screen-margins needs --target (the loss the runs aimed at)")
        try:
            margins = [float(m) for m in args.margins.split(",")]
            skips = [float(s) for s in args.skips.split(",")] if args.skips else []
        except ValueError:
            parser.error(f"--margins {args.margins} / --skips {args.skips}: numbers, comma-separated, e.g. 0.003,0.004")
        runs = [report.load_run(r, partial=True) for r in args.runs if (Path(r) / "metrics.jsonl").exists()]
        print(report.screen_margin_table(runs, args.target, margins))
        if skips:
            print("\n" + report.screen_replay_table(runs, args.target, margins, skips))
        return 0
    if args.records:
        print(f"wrote {report.write_results(args.records_dir, args.readme)}")
        return 0
    if args.paired:
        return paired(args)
    missing = [r for r in args.runs if not (Path(r) / "summary.json").exists()]
    if missing:  # a typo in one folder name should not quietly drop that run from the table
        print(f"compare.py: error: {missing[0]}: no summary.json there (not a run directory, or a run still starting)", file=sys.stderr)
        return 2
    if not args.runs:
        parser.error("give run directories (each with a summary.json), or --records")
    runs = [report.load_run(r) for r in args.runs]
    if args.wall:
        print(report.wall_table(runs))
        return 0
    if args.spread:
        print(report.spread_table(runs))
        return 0
    if args.step_cost:
        print(report.step_cost_table(runs, parse_windows(args.windows) if args.windows else [(6, runs[0].summary.get("steps", 6))]))
        return 0
    baseline = report.load_run(args.baseline) if args.baseline else runs[0]
    table = (report.throughput_table if args.throughput else report.training_table)(runs, baseline)
    if not args.throughput and len(runs) > 1:
        table += "\n\n" + report.equal_budget_table(runs, baseline)
    print(table)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "compare.md").write_text(table + "\n")
        for path in report.plot_curves(runs, out, args.target, training=True):
            print(f"wrote {path}")
    return 0


def paired(args) -> int:
    missing = [r for r in args.runs if not (Path(r) / "metrics.jsonl").exists()]
    if len(args.runs) < 2 or missing:
        print(f"compare.py: error: --paired takes a base run and one or more runs, each with a metrics.jsonl"
              f"{f' ({missing[0]} has none)' if missing else ''}", file=sys.stderr)
        return 2
    base, *runs = [report.load_run(r, partial=True) for r in args.runs]
    windows = parse_windows(args.windows) if args.windows else even_windows(max(e["step"] for e in base.train))
    text = report.paired_table(base, runs, windows)
    checks = report.paired_checks_table(base, runs)
    text += f"\n\nValidation screens at the steps all runs checked:\n\n{checks}" if checks else "\n\nNo validation screen at a step all runs checked."
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "paired.md").write_text(text + "\n")
    return 0


def parse_windows(text: str) -> list:
    """'300-399,400-499' -> [(300, 399), (400, 499)]."""
    try:
        windows = [tuple(int(n) for n in part.split("-")) for part in text.split(",")]
    except ValueError:
        windows = []
    if not windows or any(len(w) != 2 or w[0] > w[1] for w in windows):
        raise SystemExit(f"compare.py: error: --windows {text}: steps FIRST-LAST, comma-separated, e.g. 300-399,400-499")
    return windows


def even_windows(last_step: int, count: int = 5) -> list:
    """count windows of equal length covering steps 1..last_step."""
    edges = [1 + round(i * last_step / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1] - 1) for i in range(count) if edges[i + 1] > edges[i]]


if __name__ == "__main__":
    sys.exit(main())
