"""Throughput benchmark: time (script, flags) configurations side by side on one GPU.

    python scripts/bench.py --rows scripts/rows/throughput.json --common "--data webmix" --out logs/bench
    python scripts/bench.py --row "defaults=train_gpt2.py" --row "sdpa=train_gpt2.py --attn sdpa" --out logs/bench

Each row runs as its own process for --warmup-steps + --steps optimizer steps (validation only
at the end, on --val-tokens tokens of each validation set; no export); its ms/step is the median
over the --steps steps after the warm-up ones; "tokens/s over the run" divides all its tokens by
its whole training time, and the speed ratio uses that (a row whose step cost changes as it trains,
like MTP's annealed heads, is not judged by its cheapest steps). The end-of-run validation losses are in the
table too: with enough steps (e.g. --steps 60 --val-tokens 2097152), rows of equal batch compare
their loss at an equal token budget. Same model size and batch across rows unless a row's flags say otherwise.
With --equal-time BENCH_JSON (an earlier bench of the same rows), each row instead trains for the
steps that fit in the base row's training time of that bench at the row's own mean step time,
its schedule scaled to them: the rows' losses then compare at an equal time budget.
With --charge-setup too, a row's one-time setup that the base row lacks (summary.json's setup_s: RETRO's index
build) comes out of its budget, so the rows compare at equal wall time of training plus setup.
With --seeds N each row also runs with --seed 1..N-1 (labelled ROW_seed1, ...; the plain row keeps
its script's default seed), and the table ends with each row's spread of losses over its seeds: at short budgets a
single seed's gap of a few hundredths can be noise or one training-loss spike.
MFU is taken against the GPU's datasheet bf16 peak (kit/core/hw.py), or, for a GPU not in that
table, against a bf16 matrix product measured here (--peak-flops overrides both).
Writes bench.json and bench.md into --out, and prints the table.
"""

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.core import hw  # noqa: E402
from kit.tools import children  # noqa: E402
from kit.tools import report  # noqa: E402
from kit.loop.runlog import read_summary, set_aside  # noqa: E402


def parse_row(text: str) -> dict:
    label, _, command = text.partition("=")
    words = shlex.split(command)
    if not label or not words or not words[0].endswith(".py"):
        raise SystemExit(f"bench: a row is 'label=script.py [flags]', got {text!r}")
    return {"label": label, "script": words[0], "flags": words[1:]}


def load_rows(args) -> list[dict]:
    rows = [parse_row(r) for r in args.row or []]
    if args.rows:
        for entry in json.loads(Path(args.rows).read_text()):
            rows.append({"label": entry["label"], "script": entry.get("script", "train_gpt2.py"), "flags": shlex.split(entry.get("flags", "")),
                         "export": bool(entry.get("export", False))})  # keep the weights, for a later analysis (moe_routing.py)
    if not rows:
        raise SystemExit("bench: give --row or --rows")
    if args.only:  # a subset of a rows file, in the file's order
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - {r["label"] for r in rows})
        if unknown:
            raise SystemExit(f"bench: --only: no row labelled {', '.join(unknown)}")
        rows = [r for r in rows if r["label"] in wanted]
    return with_seeds(rows, getattr(args, "seeds", 1))


SEED_MARK = "_seed"


def with_seeds(rows: list[dict], seeds: int) -> list[dict]:
    """Each row, then its copies with --seed 1..seeds-1 (labelled ROW_seedK), row by row."""
    if seeds > 1 and any("--seed" in r["flags"] for r in rows):
        raise SystemExit("bench: --seeds: a row already sets --seed")
    seeded = [r if k == 0 else {**r, "label": f"{r['label']}{SEED_MARK}{k}", "flags": [*r["flags"], "--seed", str(k)], "seed_of": r["label"]}
              for r in rows for k in range(max(1, seeds))]
    labels = [r["label"] for r in seeded]
    if len(set(labels)) < len(labels):
        raise SystemExit(f"bench: two rows are labelled {next(x for x in labels if labels.count(x) > 1)}")
    return seeded


def seed_spread(results: list[dict], key: str = "val_loss") -> str:
    """Per row run with several seeds: its losses, their mean and their range (max - min); '' if none."""
    groups = {}
    for r in results:
        if r.get(key) is not None:
            groups.setdefault(r.get("seed_of", r["label"]), []).append(r[key])
    lines = [f"| {label} | {len(losses)} | {' / '.join(f'{v:.4f}' for v in losses)} | {sum(losses) / len(losses):.4f} | {max(losses) - min(losses):.4f} |"
             for label, losses in groups.items() if len(losses) > 1]
    if not lines:
        return ""
    return "\n".join(["| row | seeds | val loss per seed | mean | range |", "|---|---|---|---|---|", *lines])


def peak_for(device_name: str, override):
    """(peak FLOP/s, where it came from)."""
    if override:
        return override, "given"
    peak = hw.peak_flops(device_name)
    if peak:
        return peak, "datasheet"
    if device_name != "cpu":
        return hw.measured_matmul_flops(), "measured bf16 matmul"
    return None, "none"


def finished(run_dir: Path, steps: int) -> bool:
    """Whether run_dir holds a completed run of exactly this many steps."""
    summary = read_summary(run_dir)
    return summary.get("status") == "completed" and summary.get("steps") == steps


def equal_time_steps(reference: dict, base_label: str = None, charge_setup: bool = False) -> dict:
    """{label: optimizer steps} that fit each row of an earlier bench.json into its base row's
    training time (the first row's unless base_label), at the row's own mean step time over its
    run (the median step where the row has no training time): a row whose steps get cheaper as it
    trains (MTP's annealed heads) would overrun the budget at its median. With charge_setup, a row's
    setup_s beyond the base row's is spent from its budget first (at least one step is left)."""
    if reference.get("parallel", 1) > 1:
        raise SystemExit("bench: --equal-time: the reference bench ran rows in parallel, so its step times are not measurements")
    rows = {r["label"]: r for r in reference["rows"] if r.get("ms_per_step")}
    if not rows:
        raise SystemExit("bench: --equal-time: the reference bench has no measured rows")
    base = rows[base_label] if base_label else next(iter(rows.values()))
    budget_ms = base["train_s"] * 1000 if base.get("train_s") else base["ms_per_step"] * (reference["steps"] + reference["warmup_steps"])
    def setup_ms(row: dict) -> float:
        return 1000 * (row.get("setup_s") or 0.0) if charge_setup else 0.0

    return {label: max(1, round((budget_ms - max(0.0, setup_ms(r) - setup_ms(base))) / mean_step_ms(r))) for label, r in rows.items()}


def mean_step_ms(row: dict) -> float:
    return row["train_s"] * 1000 / row["steps"] if row.get("train_s") and row.get("steps") else row["ms_per_step"]


def row_command(row: dict, args, out: Path) -> list[str]:
    cmd = [sys.executable, row["script"], *shlex.split(args.common), *row["flags"]]
    if args.parallel > 1 and args.memory_cap_gib:  # rows sharing the GPU split its memory
        cmd += ["--memory-cap-gib", str(args.memory_cap_gib)]
    return cmd + ["--max-steps", str(row_steps(row, args)), "--val-every", "0", "--val-tokens", str(args.val_tokens),
                  "--export", "1" if row.get("export") else "0", "--progress", "lines", "--out-dir", str(out / row["label"])]


def row_steps(row: dict, args) -> int:
    return row.get("total_steps", args.warmup_steps + args.steps)


class RowProcess:
    """One row's training process, its console file and its clock (None: measured by an earlier bench)."""

    def __init__(self, row: dict, args, out: Path):
        self.row, self.args, self.out = row, args, out
        self.run_dir = out / row["label"]
        self.proc = self.console = None
        if finished(self.run_dir, row_steps(row, args)):  # a bench cut short and started again keeps its measured rows
            print(f"[bench] {row['label']}: already measured in {self.run_dir}", flush=True)
            return
        if (earlier := set_aside(self.run_dir)) is not None:  # a row cut short before: its files kept apart, not mixed with the new run's
            print(f"[bench] {row['label']}: the earlier attempt moved to {earlier}", flush=True)
        cmd = row_command(row, args, out)
        print(f"[bench] {row['label']}: {shlex.join(cmd[1:])}", flush=True)
        self.t0 = time.perf_counter()
        self.console = open(out / f"{row['label']}.console.txt", "w")
        self.proc = children.start(cmd, cwd=REPO, stdout=self.console, stderr=subprocess.STDOUT)

    def exit_code(self):
        """The process's exit code once it ended (124 once past --row-timeout, which stops it); None while it runs."""
        if self.proc is None:
            return 0
        code = self.proc.poll()
        if code is None and self.args.row_timeout and time.perf_counter() - self.t0 > self.args.row_timeout:
            self.proc.kill()
            children.wait(self.proc)
            self.console.write(f"bench: row stopped after --row-timeout {self.args.row_timeout}s\n")
            code = 124
        if code is not None and not self.console.closed:
            children.forget(self.proc)
            self.console.close()
        return code

    def result(self, code: int) -> dict:
        row, args = self.row, self.args
        result = {**row, "exit_code": code, "run_dir": str(self.run_dir), "process_s": time.perf_counter() - self.t0 if self.proc else None}
        if code != 0 or not (self.run_dir / "summary.json").exists():
            tail = (self.out / f"{row['label']}.console.txt").read_text().strip().splitlines()[-1:] or [""]
            print(f"[bench] {row['label']} failed (exit {code}): {tail[0]}", flush=True)
            return result
        total_steps = row_steps(row, args)
        run = report.load_run(self.run_dir, row["label"])
        ms = report.steady_step_ms(run, skip=min(args.warmup_steps, total_steps - 1), count=max(1, total_steps - args.warmup_steps))
        s = run.summary
        result.update(ms_per_step=ms, steps=s["steps"], train_s=s["train_time_s"], tokens_per_s=s["tokens"] / s["steps"] / (ms / 1000),
                      micro_batch=s["micro_batch"], peak_mem_gib=s["peak_mem_gib"], flops_per_token=s["flops_per_token"],
                      device_name=s["device_name"], batch_tokens=s["tokens"] // s["steps"], attn=s["attn"], dtype=s["dtype"],
                      compile=s["compile"], tokens=s["tokens"], val_loss=s.get("final_val_loss"),
                      val_loss_fineweb_sample=s.get("final_val_loss_fineweb_sample"), alloc_retries=s.get("alloc_retries_in_loop", s.get("alloc_retries")),
                      setup_s=s.get("setup_s"))
        return result


def run_rows(rows: list[dict], args, out: Path, on_result) -> list:
    """Run the rows, args.parallel at a time, in their order; on_result(results so far, in row order)
    after each one ends."""
    results, pending, running = [None] * len(rows), list(enumerate(rows)), {}
    while pending or running:
        if not running:
            children.stop_here_if_stopping()  # stopped by SIGTERM: its rows have ended; no new one starts
        while pending and len(running) < args.parallel:
            i, row = pending.pop(0)
            running[i] = RowProcess(row, args, out)
        for i, process in list(running.items()):
            code = process.exit_code()
            if code is not None:
                results[i] = process.result(code)
                del running[i]
                on_result([r for r in results if r is not None])
        if running:
            time.sleep(0.2)
    children.stop_here_if_stopping()
    return results


def add_mfu(results: list[dict], peak_override) -> str:
    device = next((r["device_name"] for r in results if "device_name" in r), "cpu")
    peak, source = peak_for(device, peak_override)
    for r in results:
        if "tokens_per_s" in r:
            r["mfu"] = r["tokens_per_s"] * r["flops_per_token"] / peak if peak else None
    return f"{device}; MFU against {fmt_flops(peak)} ({source})"


def fmt_flops(peak) -> str:
    return f"{peak / 1e12:.1f} TFLOP/s" if peak else "no known peak"


def markdown(results: list[dict], header: str, shared_gpu: bool = False) -> str:
    """The bench table; rows that shared the GPU (--parallel) show no speed or time."""
    base = next((r for r in results if "tokens_per_s" in r), None)
    columns = ["row", "flags", "micro-batch", "ms/step", "tokens/s", "MFU", "peak GiB", "tokens/s over the run", "vs first row (over the run)",
               "train s", "tokens", "val loss", "fineweb_sample"]
    lines = [f"Device: {header}", "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in results:
        if "tokens_per_s" not in r:
            lines.append(f"| {r['label']} | `{shlex.join(r['flags'])}` | failed (exit {r['exit_code']}) |" + " - |" * (len(columns) - 3))
            continue
        speed = [f"{r['ms_per_step']:.1f}", f"{r['tokens_per_s']:,.0f}", report.fmt(r["mfu"], ".1%")]
        rate = report.run_tokens_per_s(r)
        timing = [f"{rate:,.0f}", report.ratio(rate, report.run_tokens_per_s(base)), report.fmt(r.get("train_s"), ".1f")]
        if shared_gpu:
            speed, timing = ["shared"] * 3, ["shared"] * 3
        cells = [r["label"], f"`{shlex.join(r['flags'])}`", str(r["micro_batch"]), *speed, report.fmt(r["peak_mem_gib"], ".1f"), *timing,
                 f"{r['tokens']:,}", report.fmt(r["val_loss"], ".4f"), report.fmt(r["val_loss_fineweb_sample"], ".4f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--row", action="append", help="'label=script.py flags...' (repeatable)")
    parser.add_argument("--rows", help="JSON list of {label, script, flags[, export: true to keep the row's weights]}")
    parser.add_argument("--only", help="comma-separated labels: bench only these rows of --rows")
    parser.add_argument("--common", default="", help="flags added to every row (before the row's own)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per row")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps before the timed ones")
    parser.add_argument("--val-tokens", type=int, default=65_536, help="validation tokens of the single end-of-run validation")
    parser.add_argument("--row-timeout", type=float, help="seconds a row may run before it is stopped and marked failed")
    parser.add_argument("--seeds", type=int, default=1, help="also run each row with --seed 1..N-1 (labelled ROW_seedK) and show each row's spread of losses")
    parser.add_argument("--equal-time", help="an earlier bench.json of these rows: train each row for the steps that fit in its base row's time")
    parser.add_argument("--equal-time-base", help="the reference's base row (default: its first measured row)")
    parser.add_argument("--charge-setup", action="store_true", help="with --equal-time: a row's one-time setup beyond the base row's (RETRO's index) "
                                                                    "comes out of its training budget (equal wall time)")
    parser.add_argument("--parallel", type=int, default=1,
                        help="rows run at once on one GPU: for passes that compare losses only (an LR check, equal time); speed is not measured then")
    parser.add_argument("--memory-cap-gib", type=float, help="with --parallel: each row's GPU memory cap (e.g. 42 for 3 rows on an H200)")
    parser.add_argument("--peak-flops", type=float, help="peak FLOP/s for MFU (default: datasheet or measured)")
    parser.add_argument("--out", default=str(REPO / "logs" / time.strftime("bench_%Y%m%d_%H%M%S")))
    args = parser.parse_args(argv)
    rows = load_rows(args)
    absent = [r["script"] for r in rows if not (REPO / r["script"]).exists()]
    if absent:  # before any row runs: a typo should not cost the rows before it
        raise SystemExit(f"bench: {absent[0]}: no such script in {REPO}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.equal_time:
        steps = equal_time_steps(json.loads(Path(args.equal_time).read_text()), args.equal_time_base, args.charge_setup)
        steps_of = lambda r: steps.get(r["label"], steps.get(r.get("seed_of")))  # a seed copy: its row's step count
        missing = [r["label"] for r in rows if steps_of(r) is None]
        if missing:
            raise SystemExit(f"bench: --equal-time: no measured ms/step for {', '.join(missing)} in {args.equal_time}")
        rows = [{**r, "total_steps": steps_of(r)} for r in rows]

    def write(results):  # after every row, so a stopped bench keeps what it measured
        header = add_mfu(results, args.peak_flops)
        if args.parallel > 1:
            header += f"; rows ran {args.parallel} at a time on one GPU, so their speed and time columns are not measurements"
        (out / "bench.json").write_text(json.dumps({"device": header, "steps": args.steps, "warmup_steps": args.warmup_steps,
                                                    "parallel": args.parallel, "rows": results}, indent=2) + "\n")
        spread = seed_spread(results)
        (out / "bench.md").write_text(markdown(results, header, shared_gpu=args.parallel > 1) + (f"\n\n{spread}" if spread else "") + "\n")

    results = run_rows(rows, args, out, write)
    print((out / "bench.md").read_text().rstrip())
    return 0 if all("tokens_per_s" in r for r in results) else 1  # every row measured


if __name__ == "__main__":
    children.stop_with_this_process()  # a stopped tool stops its runs too
    sys.exit(main())
