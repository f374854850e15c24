"""Turn a bench folder (scripts/bench.py --out) into a record under records/.

    python scripts/record_bench.py logs/bench_variants records/2026-11-29_h200_variants \\
        --title "The user's variants at 33M tokens" --command "python scripts/bench.py --rows scripts/rows/variants.json ..." \\
        --extra "at 3x LR=logs/bench_variants_lr3"

Copies bench.json, bench.md, the consoles and every row's run directory (weights and checkpoints
left out), each --extra bench into its own sub-folder, and writes record.json with the GPU, torch
version and commit read from the runs themselves (all rows must share one commit). Notes and
verdicts are yours to add to record.json; then `python scripts/compare.py --records`.

A scripts/sweep.py folder (sweep.json) becomes a record of its runs instead: the training and
equal-budget tables, and the loss curves.

A later pass over the same rows (equal time, another learning rate) joins an existing record:

    python scripts/record_bench.py --add-to records/2026-11-29_h200_ideas_equal_tokens \
        --extra "at equal time=logs/bench_ideas_equal_time" --command "python scripts/bench.py ... --equal-time logs/bench_ideas/bench.json"

Its commit, where it differs from the record's, and its command are added to the record's.
"""

import argparse
import json
import re
import shutil
import sys
from pathlib import Path

LEFT_OUT = shutil.ignore_patterns("*.safetensors", "*.pt", "checkpoints")


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def copy_bench(source: Path, target: Path) -> list[dict]:
    """Copy a bench folder; returns its rows (bench.json)."""
    if not (source / "bench.json").exists():
        raise SystemExit(f"record_bench: {source} has no bench.json")
    shutil.copytree(source, target, ignore=LEFT_OUT, dirs_exist_ok=True)
    return json.loads((source / "bench.json").read_text())["rows"]


def run_facts(folder: Path, rows: list[dict]) -> tuple[set, str]:
    """(the commits of the rows' runs, 'GPU (smXY), torch V') from their summary.json and log.txt."""
    commits, gpu = set(), None
    for row in rows:
        run = folder / row["label"]
        if not (run / "summary.json").exists():
            continue  # a failed row
        commits.add(json.loads((run / "summary.json").read_text()).get("git_commit"))
        log = (run / "log.txt").read_text() if (run / "log.txt").exists() else ""
        device = re.search(r"^device: (.+?) \((sm\d+)", log, re.M)
        torch_version = re.search(r"torch (\S+)", log)
        if gpu is None and device and torch_version:
            gpu = f"{device.group(1)} ({device.group(2)}), torch {torch_version.group(1)}"
    return commits, gpu or "-"


def parse_extra(spec: str) -> tuple[str, Path]:
    name, _, folder = spec.partition("=")
    if not folder:
        raise SystemExit(f"record_bench: --extra is 'column name=bench folder', got {spec!r}")
    return name, Path(folder)


def add_to_record(record_dir: Path, specs: list[str], command: str) -> dict:
    """Copy later benches of a record's rows into it, each as an extra bench in its own sub-folder."""
    record = json.loads((record_dir / "record.json").read_text())
    for spec in specs:
        name, folder = parse_extra(spec)
        if name in record.get("extra_benches", {}) or (record_dir / slug(name)).exists():
            raise SystemExit(f"record_bench: {record_dir} already has an extra bench {name!r}; not overwritten")
        commits = run_facts(record_dir / slug(name), copy_bench(folder, record_dir / slug(name)))[0]
        if len(commits) != 1:
            raise SystemExit(f"record_bench: {folder}'s runs come from {len(commits)} commits; one bench per commit")
        commit = commits.pop()
        if commit != record["commit"].split()[0]:
            record["commit"] += f" ({slug(name)}/: {commit})"
        record.setdefault("extra_benches", {})[name] = f"{slug(name)}/bench.json"
        record["command"] += f"; {name}: {command}"
    (record_dir / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    return record


def record_sweep(source: Path, target: Path, title: str, command: str) -> dict:
    """A sweep folder as a record of its finished runs (compare.py's tables and curves)."""
    shutil.copytree(source, target, ignore=LEFT_OUT)
    runs = [r for r in json.loads((source / "sweep.json").read_text())["runs"] if (target / r["label"] / "summary.json").exists()]
    if not runs:
        raise SystemExit(f"record_bench: no run of {source} finished")
    commits, gpu = run_facts(target, runs)
    if len(commits) != 1:
        raise SystemExit(f"record_bench: the runs come from {len(commits)} commits; one record per commit")
    return {"title": title, "gpu": gpu, "commit": commits.pop(), "command": command, "runs": {r["label"]: r["label"] for r in runs},
            "baseline": runs[0]["label"], "plot": True, "readme": False}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_dir", nargs="?")
    parser.add_argument("record_dir", nargs="?")
    parser.add_argument("--title")
    parser.add_argument("--command", required=True, help="the command that ran the bench, as it was run")
    parser.add_argument("--extra", action="append", default=[], help="'column name=bench folder': the same rows benched again (another LR, equal time)")
    parser.add_argument("--add-to", help="an existing record: add the --extra benches to it")
    args = parser.parse_args(argv)
    if args.add_to:
        if not args.extra or args.bench_dir:
            parser.error("--add-to takes --extra benches only")
        add_to_record(Path(args.add_to), args.extra, args.command)
        print(f"added to {args.add_to}/record.json; update its verdicts and notes, then: python scripts/compare.py --records")
        return 0
    if not (args.bench_dir and args.record_dir and args.title):
        parser.error("a new record needs bench_dir, record_dir and --title")
    target = Path(args.record_dir)
    if (target / "record.json").exists():
        raise SystemExit(f"record_bench: {target}/record.json exists; not overwritten")
    if (Path(args.bench_dir) / "sweep.json").exists():
        if args.extra:
            parser.error("a sweep's record takes no --extra")
        record = record_sweep(Path(args.bench_dir), target, args.title, args.command)
        (target / "record.json").write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {target}/record.json; add its notes, then: python scripts/compare.py --records")
        return 0
    rows = copy_bench(Path(args.bench_dir), target)
    commits, gpu = run_facts(target, rows)
    extra_benches = {}
    for spec in args.extra:
        name, folder = parse_extra(spec)
        extra_rows = copy_bench(folder, target / slug(name))
        commits |= run_facts(target / slug(name), extra_rows)[0]
        extra_benches[name] = f"{slug(name)}/bench.json"
    if len(commits) != 1:
        raise SystemExit(f"record_bench: the runs come from {len(commits)} commits ({', '.join(sorted(map(str, commits)))}); one record per commit")
    record = {"title": args.title, "gpu": gpu, "commit": commits.pop(), "command": args.command, "table": "bench", "runs": {},
              "baseline": rows[0]["label"], "readme": False}
    if extra_benches:
        record["extra_benches"] = extra_benches
    (target / "record.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {target}/record.json; add its notes (and verdicts), then: python scripts/compare.py --records")
    return 0


if __name__ == "__main__":
    sys.exit(main())
