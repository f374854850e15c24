"""Run a grid of configurations of one train script, each in its own run directory.

    python scripts/sweep.py train_gpt2.py --grid seq-len=1024,2048,4096,8192,16384 --out logs/ctx -- --data webmix --attn sdpa
    python scripts/sweep.py train_gpt2.py --grid lr=3e-4,6e-4,1e-3 --grid attn=manual,sdpa --gpus 0,1 -- --max-steps 333

Every combination of the --grid values runs once (flags after `--` go to every run). A failing
run is recorded and the sweep goes on; a run whose summary.json says it finished is skipped when
the sweep is started again (--rerun runs everything). With --gpus, one worker per GPU takes the
next run (CUDA_VISIBLE_DEVICES). Writes sweep.json (each run's flags, exit code, directory) and
sweep.md (the comparison table), and plots the loss curves into --out.
"""

import argparse
import itertools
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.tools import children, report  # noqa: E402
from kit.loop.runlog import FINISHED, read_summary, set_aside  # noqa: E402



def parse_grid(items: list[str]) -> list[tuple[str, list[str]]]:
    grid = []
    for item in items or []:
        name, _, values = item.partition("=")
        if not name or not values:
            raise SystemExit(f"sweep: --grid takes name=v1,v2,..., got {item!r}")
        grid.append((name.lstrip("-"), values.split(",")))
    return grid


def combinations(grid) -> list[dict]:
    """Each run: a label and its flags, e.g. {'label': 'seq-len=2048', 'flags': ['--seq-len', '2048']}."""
    runs = []
    for values in itertools.product(*[v for _, v in grid]) if grid else [()]:
        pairs = list(zip([n for n, _ in grid], values))
        runs.append({"label": "_".join(f"{n}={v}" for n, v in pairs) or "default",
                     "flags": [w for n, v in pairs for w in (f"--{n}", v)]})
    return runs


def finished(run_dir: Path) -> bool:
    return read_summary(run_dir).get("status") in FINISHED


def execute(run: dict, script: str, common: list[str], out: Path, gpu=None) -> dict:
    run_dir = out / run["label"]
    cmd = [sys.executable, script, *common, *run["flags"], "--out-dir", str(run_dir), "--progress", "lines"]
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": str(gpu)} if gpu is not None else None
    t0 = time.perf_counter()
    if (earlier := set_aside(run_dir)) is not None:  # an attempt that did not finish (or --rerun): kept apart, not overwritten
        print(f"[sweep] {run['label']}: the earlier attempt moved to {earlier}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / "console.txt", "w") as console:
        code = children.wait(children.start(cmd, cwd=REPO, env=env, stdout=console, stderr=subprocess.STDOUT))
    last = (run_dir / "console.txt").read_text().strip().splitlines()[-1:] or [""]
    status = "ok" if code == 0 else f"failed (exit {code}): {last[0]}"
    print(f"[sweep] {run['label']}: {status} ({time.perf_counter() - t0:.0f}s)", flush=True)
    return {**run, "command": shlex.join(cmd[1:]), "exit_code": code, "run_dir": str(run_dir), "gpu": gpu}


def run_all(runs, script, common, out, gpus, rerun) -> list[dict]:
    todo = queue.Queue()
    results = []
    for run in runs:
        if not rerun and finished(out / run["label"]):
            print(f"[sweep] {run['label']}: finished before, skipped", flush=True)
            results.append({**run, "exit_code": 0, "run_dir": str(out / run["label"]), "skipped": True})
        else:
            todo.put(run)
    lock = threading.Lock()

    def worker(gpu):
        while True:
            try:
                run = todo.get_nowait()
            except queue.Empty:
                return
            result = execute(run, script, common, out, gpu)
            with lock:
                results.append(result)

    threads = [threading.Thread(target=worker, args=(g,)) for g in (gpus or [None])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    order = {r["label"]: i for i, r in enumerate(runs)}
    return sorted(results, key=lambda r: order[r["label"]])


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    common = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("script", help="train script, e.g. train_gpt2.py")
    parser.add_argument("--grid", action="append", help="flag=v1,v2,... (repeatable; the sweep is their product)")
    parser.add_argument("--out", default=str(REPO / "logs" / time.strftime("sweep_%Y%m%d_%H%M%S")))
    parser.add_argument("--gpus", help="comma-separated GPU indices to run on in parallel")
    parser.add_argument("--rerun", action="store_true", help="also rerun runs that finished before")
    args = parser.parse_args(argv)
    if not (REPO / args.script).exists():
        raise SystemExit(f"sweep: {args.script}: no such script in {REPO}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    runs = combinations(parse_grid(args.grid))
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else None
    results = run_all(runs, args.script, common, out, gpus, args.rerun)
    (out / "sweep.json").write_text(json.dumps({"script": args.script, "common": common, "runs": results}, indent=2) + "\n")
    done = [report.load_run(r["run_dir"], r["label"]) for r in results if (Path(r["run_dir"]) / "summary.json").exists()]
    if done:
        table = report.training_table(done)
        (out / "sweep.md").write_text(table + "\n")
        report.plot_curves(done, out)
        print(table)
    failed = [r["label"] for r in results if r["exit_code"] != 0]
    if failed:
        print(f"[sweep] {len(failed)} of {len(results)} run(s) failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    children.stop_with_this_process()  # a stopped tool stops its runs too
    sys.exit(main())
