"""Compare run directories: a markdown table, loss curves, and the regenerated results pages.

    python scripts/compare.py logs/base logs/variant [--baseline logs/base] [--out reports/x]
    python scripts/compare.py logs/a logs/b --throughput        # speed columns instead of time-to-target
    python scripts/compare.py --records                         # rewrite records/RESULTS.md and README's results

The table has, per run: script, flags, target, whether it was reached, time to target (training
and wall), tokens to target, final validation loss (main set and fineweb_sample), steady tokens/s,
MFU, peak memory, and ratios to the baseline row (speed, and time to target when both reached).
With --out, the table goes to compare.md and the curves to loss_vs_time.png / loss_vs_tokens.png.
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
    parser.add_argument("--out", help="folder for compare.md and the PNG plots")
    parser.add_argument("--target", type=float, help="target line on the plots (default: the runs' target)")
    parser.add_argument("--records", action="store_true", help="regenerate records/RESULTS.md and the README results section")
    parser.add_argument("--records-dir", default=str(REPO / "records"))
    parser.add_argument("--readme", default=str(REPO / "README.md"))
    args = parser.parse_args(argv)
    if args.records:
        print(f"wrote {report.write_results(args.records_dir, args.readme)}")
        return 0
    missing = [r for r in args.runs if not (Path(r) / "summary.json").exists()]
    if missing:  # a typo in one folder name should not quietly drop that run from the table
        print(f"compare.py: error: {missing[0]}: no summary.json there (not a run directory, or a run still starting)", file=sys.stderr)
        return 2
    if not args.runs:
        parser.error("give run directories (each with a summary.json), or --records")
    found = [Path(r) for r in args.runs]
    runs = [report.load_run(p) for p in found]
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


if __name__ == "__main__":
    sys.exit(main())
