"""Does every training script run on a 24 GB desktop card? Each one, a few steps under --emulate-gpu.

    python3 scripts/check_desktop_fit.py --out logs/desktop_fit [--cards rtx3090,rtx4090] [--steps 20] [--jobs 5]
                                         [--scripts train_gpt2.py,train_gpt2_speedrun.py] [--common "--data webmix"]

On one larger NVIDIA GPU (an H100/H200): every train_gpt2*.py runs --steps steps as each card, with
the card's kernel paths, its 22.5 GiB memory cap and the shared-memory audits (the kit's own Triton
kernels before training; Inductor's after the warm-up and at the end, compiled again for the card).
Runs share the GPU --jobs at a time (each is capped at 22.5 GiB, so five fit an H200; their speed is
not measured here). Every run compiles (--compile 1), so that Inductor's kernels are audited too;
the baseline-family scripts take --batch-tokens 131072 (their micro-batch, and so their peak memory,
does not depend on it). Writes desktop_fit.json and desktop_fit.md (a table: status, peak memory,
the paths the log names, the largest shared-memory need) into --out; exits 1 where a run failed.
Called again with the same --out, it keeps the runs that finished (their folders hold summary.json)
and runs the rest. With --merge FOLDER... it runs nothing and writes one table, every script by every
card, from earlier --out folders or records (the latest audited run of each), exiting 1 while a
cell failed or is not run.
"""

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from kit.tools import children  # noqa: E402
RECORD = "train_gpt2_speedrun.py"
SMALL_BATCH = ["--batch-tokens", "131072"]  # the baseline family's steps of 524,288 tokens only add micro-steps
LOG_LINES = ("device:", "GPU profile:", "batch:", "kernel paths:", "shared-memory audit", "Inductor kernel audit")


def training_scripts() -> list:
    return sorted(p.name for p in REPO.glob("train_gpt2*.py"))


def command(script: str, card: str, steps: int, out_dir: Path, common: list) -> list:
    extra = [] if script == RECORD else SMALL_BATCH
    return [sys.executable, script, *common, "--max-steps", str(steps), "--val-every", "0", "--val-tokens", "1048576",
            "--export", "0", "--compile", "1", "--progress", "lines", "--emulate-gpu", card, *extra, "--out-dir", str(out_dir)]


def run_one(script: str, card: str, args) -> dict:
    out_dir = Path(args.out) / f"{Path(script).stem}_{card}"
    cmd = command(script, card, args.steps, out_dir, shlex.split(args.common))
    if (out_dir / "summary.json").exists():  # a run of an earlier call of this tool: read, not repeated (delete the folder to repeat it)
        row = {"script": script, "card": card, "rc": 0, "wall_s": 0.0, "command": shlex.join(cmd[1:]), **read_run(out_dir, Path(args.out) / f"{out_dir.name}.txt")}
        row["rc"] = 0 if row["status"] == "completed" else 1
        print(f"{script} as {card}: {row['status']} in an earlier call, kept", flush=True)
        return row
    env = dict(os.environ, TORCHINDUCTOR_COMPILE_THREADS=str(args.compile_threads), PYTHONUNBUFFERED="1")
    t0 = time.perf_counter()
    with open(Path(args.out) / f"{out_dir.name}.txt", "w") as console:
        rc = children.wait(children.start(cmd, cwd=REPO, stdout=console, stderr=subprocess.STDOUT, env=env))
    row = {"script": script, "card": card, "rc": rc, "wall_s": round(time.perf_counter() - t0, 1), "command": shlex.join(cmd[1:])}
    row.update(read_run(out_dir, Path(args.out) / f"{out_dir.name}.txt"))
    print(f"{script} as {card}: rc {rc}, {row['status']}, peak {row['peak_mem_gib']} GiB, {row['wall_s']} s", flush=True)
    return row


def run_lines(log: str) -> str:
    """log.txt without the sources it quotes (they hold the very prefixes the table looks for, in print calls)."""
    return re.sub(r"^----- source of .*?^----- end of source -----\n", "", log, flags=re.M | re.S)


def read_run(out_dir: Path, console: Path) -> dict:
    """status, peak memory, the log's path lines and the largest shared-memory needs of one run."""
    summary = json.loads((out_dir / "summary.json").read_text()) if (out_dir / "summary.json").exists() else {}
    log = run_lines((out_dir / "log.txt").read_text()) if (out_dir / "log.txt").exists() else ""
    lines = {prefix: next((line.split("] ", 1)[-1] for line in log.splitlines() if prefix in line), "") for prefix in LOG_LINES}
    tail = console.read_text().strip().splitlines()[-1:] if console.exists() else []
    own = re.search(r"the largest needs ([\d,]+) of", lines["shared-memory audit"])
    inductor = summary.get("inductor_kernel_audit") or {}
    return {"status": summary.get("status", "no summary"), "peak_mem_gib": round(summary["peak_mem_gib"], 2) if summary.get("peak_mem_gib") else None,
            "steps": summary.get("steps"), "micro_batch": summary.get("micro_batch"),
            "own_kernels_largest_bytes": int(own.group(1).replace(",", "")) if own else None,
            "inductor_kernels": inductor.get("kernels"), "inductor_largest": inductor.get("largest"),
            "inductor_retuned": inductor.get("retuned", []), "inductor_not_compilable": inductor.get("not_compilable", []),
            "log_lines": lines, "last_console_line": tail[0] if tail else ""}


def table(rows: list) -> str:
    head = ["| script | card | status | peak memory (cap 22.5 GiB) | micro-batch | attention / head path | "
            "largest shared memory per block (limit 101,376 B) | wall |", "|---|---|---|---|---|---|---|---|"]
    body = []
    for r in rows:
        paths = r["log_lines"]["device:"].split("attention: ")[-1] if r["log_lines"]["device:"] else ""
        head_path = re.search(r"head: ([^|]+)", r["log_lines"]["kernel paths:"])
        largest = r["inductor_largest"]
        needs = []
        if largest:
            needs.append(f"{largest['card_bytes']:,} B Inductor ({largest['kind']}) of {r['inductor_kernels']} kernels")
        if r["own_kernels_largest_bytes"]:
            needs.append(f"{r['own_kernels_largest_bytes']:,} B own Triton")
        notes = ([f"{len(r['inductor_retuned'])} would retune"] if r["inductor_retuned"] else []) + \
                ([f"{len(r['inductor_not_compilable'])} not audited (host-only code)"] if r["inductor_not_compilable"] else [])
        status = r["status"] if r["rc"] == 0 else f"**{r['status']} (rc {r['rc']})**: {r['last_console_line'][:120]}"
        body.append(f"| {r['script']} | {r['card']} | {status} | {r['peak_mem_gib']} GiB | {r['micro_batch']} | {paths}"
                    f"{'; head: ' + head_path.group(1).strip() if head_path else ''} | {'; '.join(needs + notes) or '-'} | {r['wall_s']:.0f} s |")
    return "\n".join(head + body)


def merged_rows(folders: list) -> dict:
    """{(script, card): (row, folder)} from the desktop_fit.json of each folder; a later folder's row (in the order given)
    replaces an earlier one's, except that a run without the Inductor audit never replaces one with it."""
    merged = {}
    for folder in folders:
        rows = json.loads((Path(folder) / "desktop_fit.json").read_text())
        for row in [r for card_rows in rows.values() for r in card_rows] if isinstance(rows, dict) else rows:  # or {card: rows}
            key, earlier = (row["script"], row["card"]), merged.get((row["script"], row["card"]))
            if earlier is None or row.get("inductor_kernels") or not earlier[0].get("inductor_kernels"):
                merged[key] = (row, Path(folder))
    return merged


def fit_cell(row: dict, folder: Path) -> str:
    """One script as one card, in a few words: status, peak memory, the largest shared-memory need, and where it was measured."""
    link = f"[{folder.name}]({folder.as_posix()}/)"
    if row["rc"] != 0:
        return f"**{row['status']}** ({link})"
    largest = row.get("inductor_largest")
    need = f"{largest['card_bytes']:,} B" if largest else "no Inductor audit"
    return f"{row['status']}, {row['peak_mem_gib']} GiB, {need} ({link})"


def merged_table(folders: list, scripts: list, cards: list) -> str:
    """Every script by every card from several runs of this tool (their --out folders, oldest first): what the latest
    run with the audit found, or "not run"."""
    merged = merged_rows(folders)
    lines = ["| script | " + " | ".join(f"as {card}" for card in cards) + " |", "|---|" + "---|" * len(cards)]
    for script in scripts:
        cells = [fit_cell(*merged[(script, card)]) if (script, card) in merged else "not run" for card in cards]
        lines.append(f"| {script} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--merge", nargs="+", metavar="FOLDER", help="no runs: one table of every script by every card from these "
                        "earlier --out folders (or records), oldest first, written to --out/desktop_fit_all.md")
    parser.add_argument("--out", required=True)
    parser.add_argument("--cards", default="rtx3090,rtx4090")
    parser.add_argument("--scripts", default="", help="comma-separated; default every train_gpt2*.py")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--jobs", type=int, default=5, help="runs sharing the GPU at once (each capped at 22.5 GiB)")
    parser.add_argument("--compile-threads", type=int, default=max(1, (os.cpu_count() or 4) // 5), help="Inductor's compile workers per run")
    parser.add_argument("--common", default="--data webmix", help="flags for every run")
    args = parser.parse_args(argv)
    scripts = [s for s in args.scripts.split(",") if s] or training_scripts()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    if args.merge:
        folders = [f for f in args.merge if Path(f).is_dir()]  # a glob such as *desktop_fit* also names the merged table itself
        lacking = [f for f in folders if not (Path(f) / "desktop_fit.json").exists()]
        if lacking:
            parser.error(f"--merge {lacking[0]}: no desktop_fit.json there (an --out folder of this tool, or a record of one)")
        merged = merged_table(folders, scripts, args.cards.split(","))
        (Path(args.out) / "desktop_fit_all.md").write_text(merged + "\n")
        print(merged)
        return 0 if "not run" not in merged and "**" not in merged else 1
    # card by card: the second card's runs of a script find its graphs in the compile cache
    runs = [(script, card) for card in args.cards.split(",") for script in scripts]
    with ThreadPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(lambda sc: run_one(*sc, args), runs))
    (Path(args.out) / "desktop_fit.json").write_text(json.dumps(rows, indent=1))
    (Path(args.out) / "desktop_fit.md").write_text(table(rows) + "\n")
    print(table(rows))
    return 0 if all(r["rc"] == 0 for r in rows) else 1


if __name__ == "__main__":
    children.stop_with_this_process()  # a stopped check stops its runs too
    sys.exit(main())
