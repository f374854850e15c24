"""Reading run directories back: comparison tables, loss curves, and records/RESULTS.md.

A run directory is what kit.loop.train writes (summary.json, metrics.jsonl, config.json). A record
is a folder under records/ with a record.json naming its runs:

    {"title": "...", "gpu": "NVIDIA H200", "commit": "...", "command": "...",
     "table": "training" | "throughput" | "bench" | "file" | "none", "runs": {"label": "relative/run/dir", ...},
     "baseline": "label", "notes": "...", "plot": true,
     "flags": {"label": "--attn sdpa"},   # only for runs whose summary.json lacks its flags
     "verdicts": {"label": "..."},         # bench records: one verdict per row, in a table of measured figures
     "extra_benches": {"at 3x LR": "sub/bench.json"},  # the same rows benched again (another LR, equal time)
     "table_file": "x.md",                 # "table": "file": markdown a benchmark script wrote, shown as it is
     "images": [["caption", "plot.png"]],  # a benchmark's own plots in the folder, shown after the table
     "headline": true,                     # also shown in full in the README (else one row of its index)
     "readme": false}                      # left out of the README (RESULTS.md only)

`write_results` turns every record into a section of records/RESULTS.md, and the README's results
(between the results markers) into an index of the records with the headline records in full, so no
figure is ever typed by hand.
"""

import json
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from kit.loop.checks import late_check_due, replay_checks

README_START = "<!-- results:start (written by scripts/compare.py --records) -->"
README_END = "<!-- results:end -->"
BOOKKEEPING_FLAGS = {"--out-dir", "--progress"}


@dataclass
class Run:
    label: str
    path: Path
    summary: dict
    vals: list = field(default_factory=list)  # validation events from metrics.jsonl
    train: list = field(default_factory=list)  # training-step events

    @property
    def flags(self) -> str:
        """The run's command-line flags, less the bookkeeping ones (--out-dir, --progress)."""
        words, kept = list(self.summary.get("flags") or []), []
        while words:
            word = words.pop(0)
            if word in BOOKKEEPING_FLAGS:
                words = words[1:]
            else:
                kept.append(word)
        return shlex.join(kept)


def load_run(path, label: str = None, partial: bool = False) -> Run:
    """A run directory; with partial, one without summary.json is read from its metrics.jsonl alone (a run cut short)."""
    path = Path(path)
    has_summary = (path / "summary.json").exists() or not partial  # a finished run's missing summary stays an error
    summary = json.loads((path / "summary.json").read_text()) if has_summary else {}
    return Run(label or path.name, path, summary, *load_run_events(path))


def steady_step_ms(run: Run, skip: int = 5, count: int = None):
    """Median step time after `skip` warm-up steps (over `count` steps, or all that follow)."""
    times = [e["step_ms"] for e in run.train][skip:]
    times = times[:count] if count else times
    return statistics.median(times) if times else None


def fmt(value, spec: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return format(value, spec)


def ratio(a, b) -> str:
    return f"{a / b:.2f}x" if (a and b) else "-"


def run_tokens_per_s(row: dict):
    """A bench row's tokens over its whole training time. Unlike the median step's rate
    (tokens_per_s), it counts every step, so it is the rate that decides time-to-target for rows
    whose step cost changes over the run (MTP's annealed heads, a curriculum). Falls back to the
    median where the row has no training time."""
    if row.get("tokens") and row.get("train_s"):
        return row["tokens"] / row["train_s"]
    return row.get("tokens_per_s")


SPIKE_RISE = 0.3  # nats of training loss above the run's lowest so far


def loss_spikes(train: list, rise: float = SPIKE_RISE, skip: int = 3) -> list:
    """(step, loss) where a run's training loss climbs more than `rise` above the lowest loss it
    has reached, one entry per episode (the first step of it); the first `skip` steps are left out.
    At short budgets a spike near the peak learning rate can decide a comparison on its own."""
    spikes, lowest, inside = [], float("inf"), False
    for event in train:
        loss = event["loss"]
        above = event["step"] > skip and loss > lowest + rise
        if above and not inside:
            spikes.append((event["step"], loss))
        inside, lowest = above, min(lowest, loss)
    return spikes


def spikes_cell(spikes: list) -> str:
    return ", ".join(f"{step}: {loss:.2f}" for step, loss in spikes) or "none"


def run_spikes(run_dir: Path):
    """The spikes of the run in run_dir (from its metrics.jsonl), or None where it has no metrics.jsonl."""
    if not (Path(run_dir) / "metrics.jsonl").exists():
        return None
    return loss_spikes(load_run_events(run_dir)[1])


def metrics_events(path) -> list:
    """Every event of a run directory's metrics.jsonl ([] where it has none)."""
    path = Path(path) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def load_run_events(path) -> tuple:
    """(validation events, training events) of a run directory's metrics.jsonl."""
    events = metrics_events(path)
    return [e for e in events if e["type"] == "val"], [e for e in events if e["type"] == "train"]


def mean_train_loss_difference(run: Run, base: Run, first: int, last: int):
    """(mean of run's minus base's training loss over the steps first..last both logged, how many steps), or (None, 0)."""
    base_loss = {e["step"]: e["loss"] for e in base.train}
    differences = [e["loss"] - base_loss[e["step"]] for e in run.train if first <= e["step"] <= last and e["step"] in base_loss]
    return (sum(differences) / len(differences), len(differences)) if differences else (None, 0)


def paired_table(base: Run, runs: list[Run], windows: list) -> str:
    """Runs that took the same batches as base at every step (same seed and data order): the mean per-step difference of
    their training loss in each window of steps (first, last), far less noisy than one step's; (n) = steps averaged.
    Partial runs count: only metrics.jsonl is read."""
    head = ["| run | last step | " + " | ".join(f"steps {a}-{b}" for a, b in windows) + " |", "|---|---|" + "---|" * len(windows)]
    body = []
    for run in runs:
        cells = []
        for first, last in windows:
            mean, count = mean_train_loss_difference(run, base, first, last)
            cells.append(f"{mean:+.4f} ({count})" if count else "-")
        body.append(f"| {run.label} | {max((e['step'] for e in run.train), default='-')} | " + " | ".join(cells) + " |")
    return "\n".join(head + body)


def screen_losses(run: Run) -> dict:
    """{step: loss on the validation screen} (the first tokens of the validation shard, the same in every run: a screen
    alone, or the screen a full validation reports beside its own loss) from the run's metrics.jsonl."""
    return {e["step"]: e["screen_loss"] for e in metrics_events(run.path) if e["type"] in ("val", "val_screen") and e.get("screen_loss") is not None}


def wall_parts(run: Run) -> list:
    """(part, seconds, note) rows of where a finished run's wall time went, from summary.json and metrics.jsonl."""
    s, events = run.summary, metrics_events(run.path)
    screens = [e["eval_s"] for e in events if e.get("type") == "val_screen" and "eval_s" in e]
    fulls = [e["eval_s"] for e in events if e.get("type") == "val" and "eval_s" in e]
    imports, startup, setup = s.get("imports_s"), s.get("startup_s") or 0.0, s.get("setup_s") or 0.0
    rows = [("Python and imports", imports, "")]  # None: a run older than this count (its start-up holds them)
    if s.get("startup_parts_s"):  # the start-up after the imports by part (runs since this count)
        rows += [(f"start-up: {part}", seconds, f"{setup:.1f} s of it the variant's own set-up" if setup and part == "model" else "")
                 for part, seconds in s["startup_parts_s"].items()]
    else:
        rows.append(("start-up", startup - (imports or 0.0), f"{setup:.1f} s of it the variant's own set-up" if setup else ""))
    for part, seconds in (s.get("warmup_parts_s") or {}).items():
        phases = (s.get("warmup_compile_phases_s") or {}).get(part) or {}
        rows.append((f"warm-up: {part}", seconds, ", ".join(f"{name} {value:.1f}" for name, value in phases.items() if value >= 0.05)))
    if not s.get("warmup_parts_s"):
        rows.append(("warm-up", s.get("warmup_s") or 0.0, ""))
    rows.append(("training", s.get("train_time_s") or 0.0, f"{s.get('steps', 0)}"))
    rows.append(("evaluation: screens", sum(screens), f"{len(screens)}"))
    rows.append(("evaluation: full validations", sum(fulls), f"{len(fulls)}"))
    rows.append(("evaluation: other", (s.get("eval_time_s") or 0.0) - sum(screens) - sum(fulls), ""))
    accounted = startup + (s.get("warmup_s") or 0.0) + (s.get("train_time_s") or 0.0) + (s.get("eval_time_s") or 0.0)
    rows.append(("the rest (the loop's own work, saving, the end)", (s.get("wall_time_s") or 0.0) - accounted, ""))
    rows.append(("wall time: the process's start to summary.json", s.get("wall_time_s") or 0.0, ""))
    return rows


def wall_table(runs: list[Run]) -> str:
    """Where each run's wall time went, a column per run: seconds, and in brackets the steps, the checks or the
    compile phases of each part (a part one run lacks: -)."""
    parts = [{name: (seconds, note) for name, seconds, note in wall_parts(run)} for run in runs]
    names = list(dict.fromkeys(name for p in parts for name in p))
    lines = ["| part | " + " | ".join(f"{run.label} (s)" for run in runs) + " |", "|---|" + "---|" * len(runs)]
    for name in names:
        cells = [f"{p[name][0]:.1f}" + (f" ({p[name][1]})" if p[name][1] else "") if p.get(name, (None,))[0] is not None else "-" for p in parts]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def screened_validations(run: Run) -> list:
    """(step, screen loss, full loss) of each full validation of the run that a screen came before at its step."""
    screens = screen_losses(run)
    return [(e["step"], screens[e["step"]], e["val_loss"]) for e in run.vals if e["step"] in screens and e.get("val_loss") is not None]


def mean_screen_excess(runs: list[Run]) -> float:
    """How far the screen reads above the full validation at the same step, on average over the runs' pairs."""
    excess = [screen - full for run in runs for _, screen, full in screened_validations(run)]
    return sum(excess) / len(excess)


def screen_margin_table(runs: list[Run], target: float, margins: list) -> str:
    """How far the screens read above the full validation, and what each --val-screen-margin would have done:
    full validations it skips (each a miss, the loss above the target) and crossings it would have delayed."""
    pairs = [screened_validations(run) for run in runs]
    rows = [(screen, full) for run_pairs in pairs for _, screen, full in run_pairs]
    if not rows:
        return "No full validation after a screen in these runs."
    offsets = [screen - full for screen, full in rows]
    lines = [f"{len(rows)} full validations after a screen in {sum(bool(p) for p in pairs)} runs: the screen read "
             f"{min(offsets):+.4f} to {max(offsets):+.4f} (mean {mean_screen_excess(runs):+.4f}) against the full loss.", "",
             f"| margin | full validations skipped (misses) | crossings delayed (target {target}) |", "|---|---|---|"]
    for margin in margins:
        skipped = [(screen, full) for screen, full in rows if screen > target + margin]
        lost = sum(full <= target for _, full in skipped)
        lines.append(f"| {margin} | {len(skipped) - lost} | {lost} |")
    return "\n".join(lines)


def check_steps(run: Run) -> list:
    """The steps a run checks at from its first screen on, by its config.json's late-check settings ([] without one)."""
    config_path, screens = run.path / "config.json", screen_losses(run)
    if not screens or not config_path.exists():
        return []
    c = json.loads(config_path.read_text())
    return [s for s in range(min(screens), c["max_steps"] + 1)
            if s == c["max_steps"] or late_check_due(s, c["max_steps"], c.get("val_every", 0), c.get("late_val_frac", 0.0), c.get("late_val_every", 0))]


def screen_replay_table(runs: list[Run], target: float, margins: list, skips: list) -> str:
    """The runs' checks replayed under each margin and skip (kit/loop/checks.py's replay_checks): screens and full
    validations run, and the crossings measured later than the run measured them."""
    runs = [run for run in runs if check_steps(run)]
    if not runs or not any(screened_validations(run) for run in runs):
        return "No run here both screened and validated in full after a screen."
    offset = mean_screen_excess(runs)
    recorded = [min((e["step"] for e in run.vals if e.get("val_loss") is not None and e["val_loss"] <= target), default=None) for run in runs]
    inputs = [(screen_losses(run), {e["step"]: e["val_loss"] for e in run.vals if e.get("val_loss") is not None}, check_steps(run)) for run in runs]
    lines = [f"{len(runs)} runs replayed, each under every margin and skip below whatever it ran with (screens between the recorded "
             f"ones interpolated; a full validation not recorded taken as the screen less {offset:.4f}, the mean excess):", "",
             "| margin | skip | screens | full validations | crossings measured later (steps later in all) |", "|---|---|---|---|---|"]
    for margin in margins:
        for skip in skips:
            results = [replay_checks(screens, fulls, steps, target, margin, skip, offset) for screens, fulls, steps in inputs]
            later = [(got or 10**6) - was for (_, _, got), was in zip(results, recorded) if was is not None and (got is None or got > was)]
            lines.append(f"| {margin} | {skip} | {sum(r[0] for r in results)} | {sum(r[1] for r in results)} | "
                         f"{len(later)} ({sum(later) if all(x < 10**5 for x in later) else 'one never'}) |")
    return "\n".join(lines)


def paired_checks_table(base: Run, runs: list[Run]) -> str:
    """The validation screens at the steps base and every run checked, with each run's difference to base; '' where
    they share none."""
    base_checks, run_checks = screen_losses(base), [screen_losses(run) for run in runs]
    shared = sorted(set(base_checks).intersection(*run_checks))
    if not shared:
        return ""
    head = ["| step | " + " | ".join([base.label] + [run.label for run in runs]) + " |", "|---|" + "---|" * (len(runs) + 1)]
    body = [f"| {step} | {base_checks[step]:.4f} | " + " | ".join(f"{c[step]:.4f} ({c[step] - base_checks[step]:+.4f})" for c in run_checks) + " |"
            for step in shared]
    return "\n".join(head + body)


def training_table(runs: list[Run], baseline: Run = None) -> str:
    """Time-to-target comparison: one row per run, ratios against the baseline row."""
    baseline = baseline or (runs[0] if runs else None)
    head = ("| run | script | flags | target | reached | time to target (train / wall) | tokens to target | final val loss | "
            "fineweb_sample | tokens/s | MFU | peak GiB | speed vs baseline | time to target vs baseline |")
    lines = [head, "|" + "---|" * 14]
    for r in runs:
        s, b = r.summary, baseline.summary
        ttt = f"{fmt(s.get('time_to_target_s'), '.1f')} s / {fmt(s.get('wall_time_s'), '.1f')} s" if s.get("reached_target") else f"- / {fmt(s.get('wall_time_s'), '.1f')} s"
        time_ratio = ratio(b.get("time_to_target_s"), s.get("time_to_target_s")) if s.get("reached_target") and b.get("reached_target") else "-"
        lines.append(
            f"| {r.label} | {s.get('script')} | `{r.flags}` | {fmt(s.get('target_loss'))} | {fmt(s.get('reached_target'))} | {ttt} | "
            f"{fmt(s.get('tokens_to_target'), ',')} | {fmt(s.get('final_val_loss'), '.4f')} | {fmt(s.get('final_val_loss_fineweb_sample'), '.4f')} | "
            f"{fmt(s.get('steady_tokens_per_s'), ',.0f')} | {fmt(s.get('steady_mfu'), '.1%')} | {fmt(s.get('peak_mem_gib'), '.1f')} | "
            f"{ratio(s.get('steady_tokens_per_s'), b.get('steady_tokens_per_s'))} | {time_ratio} |"
        )
    return "\n".join(lines)


def last_val_within(run: Run, key: str, limit: float):
    """The last validation event whose `key` (tokens, train_time_ms) is at most limit; None if none."""
    within = [e for e in run.vals if e.get(key) is not None and e[key] <= limit * (1 + 1e-9)]
    return within[-1] if within else None


def equal_budget_table(runs: list[Run], baseline: Run = None) -> str:
    """Each run's validation loss within the baseline's budget, in tokens and in training time: the
    last validation at or before the baseline's final token count and final training time (no
    interpolation; the step and point of that validation are shown)."""
    baseline = baseline or (runs[0] if runs else None)
    if not baseline or not baseline.vals:
        return ""
    tokens, time_ms = baseline.vals[-1]["tokens"], baseline.vals[-1]["train_time_ms"]
    lines = [f"| run | val loss within the baseline's {tokens:,} tokens (at tokens) | within its {time_ms / 1000:.1f} s of training (at s) | "
             f"training-loss spikes (step: loss; > {SPIKE_RISE} above its lowest) |", "|---|---|---|---|"]
    for r in runs:
        cells = []
        for key, unit in (("tokens", ","), ("train_time_ms", None)):
            e = last_val_within(r, key, tokens if key == "tokens" else time_ms)
            point = None if e is None else (format(e[key], ",") if unit else f"{e[key] / 1000:.1f}")
            cells.append("-" if e is None else f"{e['val_loss']:.4f} ({point})")
        lines.append(f"| {r.label} | {cells[0]} | {cells[1]} | {spikes_cell(loss_spikes(r.train))} |")
    return "\n".join(lines)


def throughput_table(runs: list[Run], baseline: Run = None, reference_steps: int = 4768) -> str:
    """Speed comparison: steady-state ms/step, tokens/s, MFU, memory, projected full-run time."""
    baseline = baseline or (runs[0] if runs else None)
    head = f"| run | flags | micro-batch | ms/step | tokens/s | MFU | peak GiB | projected {reference_steps} steps | vs baseline |"
    lines = [head, "|" + "---|" * 9]
    for r in runs:
        s = r.summary
        ms = s.get("median_step_ms")
        lines.append(
            f"| {r.label} | `{r.flags}` | {fmt(s.get('micro_batch'))} | {fmt(ms, '.1f')} | {fmt(s.get('steady_tokens_per_s'), ',.0f')} | "
            f"{fmt(s.get('steady_mfu'), '.1%')} | {fmt(s.get('peak_mem_gib'), '.1f')} | {fmt(ms * reference_steps / 3.6e6 if ms else None, '.2f')} h | "
            f"{ratio(s.get('steady_tokens_per_s'), baseline.summary.get('steady_tokens_per_s'))} |"
        )
    return "\n".join(lines)


def flag_pairs(flags: str) -> list:
    """'--a 1 --b --c x' -> [('--a', '1'), ('--b', None), ('--c', 'x')]: each flag with its value, if it has one."""
    pairs, words = [], shlex.split(flags)
    for i, word in enumerate(words):
        if word.startswith("--"):
            value = words[i + 1] if i + 1 < len(words) and not words[i + 1].startswith("--") else None
            pairs.append((word, value))
    return pairs


def own_flags(run: Run, shared: set) -> str:
    """The run's flags (with their values) that not every compared run has: its switch, or '(none)'."""
    own = [word for flag, value in flag_pairs(run.flags) if (flag, value) not in shared for word in (flag, value) if word is not None]
    return shlex.join(own) if own else "(none)"


def step_cost_table(runs: list[Run], windows: list) -> str:
    """Runs of one machine, one after the other (speed runs with --stop-at-step): each run's median step over the
    windows (steps FIRST-LAST), its first step, steady tokens/s against the mean of the runs without a switch of
    their own (the defaults, whose spread bounds the order effect), FP8 share, peak memory and warm-up."""
    shared = set.intersection(*(set(flag_pairs(r.flags)) for r in runs)) if runs else set()
    switches = {r.label: own_flags(r, shared) for r in runs}
    rates = [r.summary.get("steady_tokens_per_s") for r in runs if switches[r.label] == "(none)" and r.summary.get("steady_tokens_per_s")]
    reference = statistics.mean(rates) if rates else None
    spans = " / ".join(f"{first}-{last}" for first, last in windows)
    lines = [f"| run | median step | steps {spans} | step 1 | steady tokens/s | vs the defaults' mean | FP8 share | peak GiB | warm-up |",
             "|" + "---|" * 9]
    for r in runs:
        step_ms = {e["step"]: e["step_ms"] for e in r.train}
        medians = [statistics.median(v) if (v := [step_ms[i] for i in range(first, last + 1) if i in step_ms]) else None
                   for first, last in windows]
        s, rate = r.summary, r.summary.get("steady_tokens_per_s")
        versus = f"{100 * (rate / reference - 1):+.2f}%" if rate and reference else "-"
        lines.append(f"| {r.label} `{switches[r.label]}` | {fmt(s.get('median_step_ms'), '.1f')} ms | "
                     f"{' / '.join(fmt(m, '.1f') for m in medians)} ms | {fmt(step_ms.get(1), '.0f')} ms | {fmt(rate, ',.0f')} | {versus} | "
                     f"{fmt(s.get('fp8_flops_share'), '.3f')} | {fmt(s.get('peak_mem_gib'), '.1f')} | {fmt(s.get('warmup_s'), '.1f')} s |")
    if len(rates) > 1:
        lines.append(f"\nThe defaults' mean: {reference:,.0f} tokens/s; their spread {min(rates):,.0f} to {max(rates):,.0f} "
                     f"({100 * (max(rates) - min(rates)) / reference:.2f}%).")
    return "\n".join(lines)


SPREAD_MEASURES = [("training time to the target (s)", "time_to_target_s", ".1f"), ("wall time (s)", "wall_time_s", ".1f"),
                   ("tokens to the target", "tokens_to_target", ",.0f"), ("step of the crossing", "steps", ".0f"),
                   ("validation loss at the crossing", "final_val_loss", ".4f"), ("fineweb_sample loss", "final_val_loss_fineweb_sample", ".4f"),
                   ("steady tokens/s", "steady_tokens_per_s", ",.0f")]


def spread_table(runs: list[Run]) -> str:
    """Repeats of one recipe (other seeds and data orders): each measure's median, lowest, highest and range over the
    runs that reached the target, and which did not (their times would only flatter the median)."""
    reached = [r for r in runs if r.summary.get("reached_target")]
    lines = [f"| measure | median | lowest | highest | range | runs ({len(reached)} of {len(runs)} reached {fmt(runs[0].summary.get('target_loss'), 'g')}) |",
             "|---|---|---|---|---|---|"]
    for name, key, spec in SPREAD_MEASURES:
        values = {r.label: r.summary[key] for r in reached if r.summary.get(key) is not None}
        if not values:
            continue
        numbers = list(values.values())
        each = ", ".join(f"{label} {fmt(v, spec)}" for label, v in values.items())
        lines.append(f"| {name} | {fmt(statistics.median(numbers), spec)} | {fmt(min(numbers), spec)} | {fmt(max(numbers), spec)} | "
                     f"{fmt(max(numbers) - min(numbers), spec)} | {each} |")
    missed = [r.label for r in runs if not r.summary.get("reached_target")]
    if missed:
        lines.append(f"\nNot reached: {', '.join(missed)} (left out of every row above).")
    return "\n".join(lines)


def plot_curves(runs: list[Run], out_dir, target=None, training=False) -> list[Path]:
    """Validation loss against training time and against tokens: loss_vs_time.png, loss_vs_tokens.png;
    with training, also every step's training loss (train_loss_vs_tokens.png) where runs logged steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = target if target is not None else next((r.summary.get("target_loss") for r in runs if r.summary.get("target_loss")), None)
    written = []
    for name, xkey, xlabel, scale in [("loss_vs_time.png", "train_time_ms", "training time (s)", 1e-3), ("loss_vs_tokens.png", "tokens", "tokens (millions)", 1e-6)]:
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
        for r in runs:
            points = [(e[xkey] * scale, e["val_loss"]) for e in r.vals]
            if points:
                ax.plot(*zip(*points), marker="o", markersize=3, label=r.label)
        if target is not None:
            ax.axhline(target, color="black", linestyle="--", linewidth=1, label=f"target {target}")
        ax.set_xlabel(xlabel)
        ax.set_ylabel("validation loss")
        finite = [e["val_loss"] for r in runs for e in r.vals if e["step"] > 0]
        if finite:  # step 0's ~11 nats would flatten the rest: the axis is clipped, and its label says so
            top = max(finite) + 0.1
            ax.set_ylim(min(finite + [target or min(finite)]) - 0.1, top)
            ax.set_ylabel("validation loss" + clipped_note([e["val_loss"] for r in runs for e in r.vals], top))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(out_dir / name)
        plt.close(fig)
        written.append(out_dir / name)
    if training and any(r.train for r in runs):
        written.append(plot_training_loss(runs, out_dir / "train_loss_vs_tokens.png", plt))
    return written


def clipped_note(values, top: float) -> str:
    """The axis label's note where a plot's y-axis hides points above `top` (the first steps' losses)."""
    above = [v for v in values if v > top]
    return f" (axis clipped: {len(above)} point(s) above, up to {max(above):.2f})" if above else ""


def plot_training_loss(runs: list[Run], out: Path, plt) -> Path:
    """Every step's training loss against tokens: where runs should agree step for step (the same run
    under torchrun, a resumed run), this shows whether they do."""
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=120)
    for r in runs:
        if r.train:
            ax.plot([e["tokens"] * 1e-6 for e in r.train], [e["loss"] for e in r.train], linewidth=1, label=r.label)
    later = [e["loss"] for r in runs for e in r.train[len(r.train) // 10:]]  # the first steps' ~11 nats would flatten the rest
    ax.set_ylabel("training loss (each step)")
    if later:
        top = max(later) + 0.1
        ax.set_ylim(min(later) - 0.1, top)
        ax.set_ylabel("training loss (each step)" + clipped_note([e["loss"] for r in runs for e in r.train], top))
    ax.set_xlabel("tokens (millions)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out


def speed_loss_points(record: dict) -> dict:
    """{label: (speed over the run / the base row's, val loss - the base row's)} for every verdict row
    of a record's bench that was measured; the base row is (1, 0)."""
    rows = bench_rows(record["folder"] / "bench.json")
    base = rows[record.get("baseline") or next(iter(rows))]
    points = {}
    for label in record.get("verdicts", rows):
        row = rows.get(label, {})
        if run_tokens_per_s(row) and row.get("val_loss") is not None:
            points[label] = (run_tokens_per_s(row) / run_tokens_per_s(base), row["val_loss"] - base["val_loss"])
    return points


def plot_speed_vs_loss(record: dict) -> Path:
    """speed_vs_loss.png in the record's folder: each row's speed against its loss change at the
    bench's token budget; below the line gains per token, right of it gains per second."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    colors, markers = plt.get_cmap("tab20").colors, "osD^v<>ph*"
    for i, (label, (speed, delta)) in enumerate(speed_loss_points(record).items()):  # a legend: labels near (1, 0) would overlap
        ax.scatter(speed, delta, s=30, color=colors[i % len(colors)], marker=markers[i % len(markers)], label=label)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    ax.axhline(0, color="black", linewidth=0.8)
    ax.axvline(1, color="black", linewidth=0.8)
    ax.set_xlabel("tokens/s over the run, against the base row")
    ax.set_ylabel("validation loss minus the base row's (lower is better)")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    out = record["folder"] / "speed_vs_loss.png"
    fig.savefig(out)
    plt.close(fig)
    return out


# ----- records -----

def load_record(folder: Path) -> dict:
    record = json.loads((folder / "record.json").read_text())
    record["folder"] = folder
    record["loaded"] = [load_run(folder / rel, label) for label, rel in record["runs"].items()]
    for run in record["loaded"]:  # runs made before summary.json recorded its flags
        if "flags" not in run.summary and label_flags(record, run.label) is not None:
            run.summary["flags"] = shlex.split(label_flags(record, run.label))
    return record


def label_flags(record: dict, label: str):
    return record.get("flags", {}).get(label)


def bench_rows(path: Path) -> dict:
    """bench.py's bench.json as {label: row}."""
    return rows_by_label(json.loads(Path(path).read_text()))


def rows_by_label(bench: dict) -> dict:
    return {row["label"]: row for row in bench["rows"]}


def bench_shared_gpu(bench: dict) -> bool:
    """Whether bench.py ran a bench's rows (its loaded bench.json) several at a time on one GPU (--parallel), so that their speed is no measurement."""
    return bench.get("parallel", 1) > 1


def loss_against(rows: dict, label: str, base_label: str, key: str = "val_loss") -> str:
    """'loss (+delta)' of a row against the base row of the same bench; '-' where either is missing."""
    row, base = rows.get(label, {}), rows.get(base_label, {})
    if row.get(key) is None:
        return "-"
    return f"{row[key]:.4f} ({row[key] - base[key]:+.3f})" if base.get(key) is not None else f"{row[key]:.4f}"


def run_lr(bench_json: Path, label: str):
    """The peak learning rate a bench row trained with (its run's config.json), or None."""
    config = Path(bench_json).parent / label / "config.json"
    return json.loads(config.read_text()).get("lr") if config.exists() else None


def best_of_benches(benches: dict, label: str):
    """(val loss, lr) of a row's lowest validation loss over benches {bench.json path: rows}; None if never measured."""
    measured = [(rows[label]["val_loss"], run_lr(path, label)) for path, rows in benches.items() if rows.get(label, {}).get("val_loss") is not None]
    return min(measured, key=lambda m: m[0]) if measured else None


def best_against(benches: dict, label: str, base_label: str) -> str:
    """'loss @lr (+delta)': a row at its best learning rate against the base row at the base row's best."""
    best, base = best_of_benches(benches, label), best_of_benches(benches, base_label)
    if best is None:
        return "-"
    at = f" @{best[1]:g}" if best[1] is not None else ""
    return f"{best[0]:.4f}{at} ({best[0] - base[0]:+.3f})" if base else f"{best[0]:.4f}{at}"


def same_token_budget(rows: dict, main: dict) -> bool:
    """Whether an extra bench trained its rows on the main bench's token budgets (a learning-rate
    check) rather than on other budgets (an equal-time pass), where both say."""
    return all(rows[label]["tokens"] == main[label]["tokens"] for label in rows.keys() & main.keys()
               if rows[label].get("tokens") and main[label].get("tokens"))


def bench_spikes(main_path: Path, extra_paths: dict, label: str) -> str:
    """A row's training-loss spikes in the main bench and in each extra bench that ran it (named)."""
    found = []
    for name, path in [(None, main_path), *extra_paths.items()]:
        spikes = run_spikes(Path(path).parent / label)
        if spikes is not None and (spikes or name is None):
            found.append(spikes_cell(spikes) if name is None else f"{name}: {spikes_cell(spikes)}")
    return "; ".join(found) or "-"


def verdict_table(record: dict) -> str:
    """One row per benched label: speed, memory and loss against the base row (also in each extra
    bench, against that bench's own base row), with extra benches at the same token budget (LR
    checks) each row's best over them and the main bench against the base row's best, and the
    record's verdict. Figures come from bench.json; a main bench whose rows shared the GPU shows no speed."""
    folder = record["folder"]
    main_bench = json.loads((folder / "bench.json").read_text())
    main = rows_by_label(main_bench)
    extra_paths = {name: folder / rel for name, rel in record.get("extra_benches", {}).items()}
    checks = {name: bench_rows(path) for name, path in extra_paths.items()}
    same_budget = {extra_paths[name]: rows for name, rows in checks.items() if same_token_budget(rows, main)}  # equal-time passes stay out
    benches = {folder / "bench.json": main, **same_budget}  # each read once
    base_label = record.get("baseline") or next(iter(main))
    base = main[base_label]
    shared = bench_shared_gpu(main_bench)
    best_head = ["best over the benches (vs the base's best)"] if same_budget else []
    head = ["row", "tokens/s over the run (vs base)", "MFU (median step)", "peak GiB", "val loss (vs base)", *[f"val loss {name} (vs its base)" for name in checks],
            *best_head, "fineweb_sample (vs base)", f"training-loss spikes (step: loss; > {SPIKE_RISE} above its lowest)", "verdict"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, verdict in record["verdicts"].items():
        row = main.get(label, {})
        rate = run_tokens_per_s(row)
        speed = f"{rate:,.0f} ({ratio(rate, run_tokens_per_s(base))})" if rate else "-"
        mfu = fmt(row.get("mfu"), ".1%")
        if shared and row:
            speed = mfu = "shared GPU"
        best = [best_against(benches, label, base_label)] if same_budget else []
        cells = [label, speed, mfu, fmt(row.get("peak_mem_gib"), ".1f"), loss_against(main, label, base_label),
                 *[loss_against(rows, label, base_label) for rows in checks.values()], *best,
                 loss_against(main, label, base_label, "val_loss_fineweb_sample"), bench_spikes(folder / "bench.json", extra_paths, label), verdict]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run_verdicts(record: dict) -> str:
    """A record of run directories (no bench.json): one verdict line per run, beside its table."""
    lines = ["| run | verdict |", "|---|---|"]
    lines += [f"| {label} | {verdict} |" for label, verdict in record["verdicts"].items()]
    return "\n".join(lines)


def record_section(record: dict, heading: str = "##", link_prefix: str = "", brief: bool = False) -> str:
    """A record as markdown; brief (the README's) shows a record's verdict table instead of its full bench
    table, and points to the notes in RESULTS.md instead of repeating them."""
    runs = record["loaded"]
    baseline = next((r for r in runs if r.label == record.get("baseline")), runs[0] if runs else None)
    folder = record["folder"].name
    parts = [f"{heading} {record['title']}", "",
             f"GPU: {record.get('gpu', '-')} · commit `{record.get('commit', '-')}` · folder `records/{folder}/`", ""]
    if record.get("command"):
        parts += [f"Command: `{record['command']}`", ""]
    if record.get("verdicts"):
        has_bench = (record["folder"] / "bench.json").exists()
        parts += [verdict_table(record) if has_bench else run_verdicts(record), ""]
    if record.get("table") == "bench":  # bench.py's own table, written when it ran
        if not (brief and record.get("verdicts")):
            parts += [(record["folder"] / "bench.md").read_text().strip(), ""]
    elif record.get("table") == "file":
        parts += [(record["folder"] / record["table_file"]).read_text().strip(), ""]
    elif record.get("table") == "none" or not runs:  # a run that measured nothing: its notes say why
        pass
    else:
        table = throughput_table if record.get("table") == "throughput" else training_table
        parts += [table(runs, baseline), ""]
        if table is training_table and len(runs) > 1:
            parts += [equal_budget_table(runs, baseline), ""]
    if record.get("plot") and (record["folder"] / "loss_vs_time.png").exists():
        parts += [f"![validation loss against training time]({link_prefix}{folder}/loss_vs_time.png)", ""]
    if record.get("train_loss_plot") and (record["folder"] / "train_loss_vs_tokens.png").exists():
        parts += [f"![training loss of every step against tokens]({link_prefix}{folder}/train_loss_vs_tokens.png)", ""]
    if record.get("speed_loss_plot") and (record["folder"] / "speed_vs_loss.png").exists():
        parts += [f"![each row's speed against its loss change at equal tokens (the main bench)]({link_prefix}{folder}/speed_vs_loss.png)", ""]
    for caption, name in record.get("images", []):  # a benchmark's own plots, [caption, file in the folder]
        if (record["folder"] / name).exists():
            parts += [f"![{caption}]({link_prefix}{folder}/{name})", ""]
    if record.get("notes"):
        parts += [f"How it was run, and what the figures do not show: [RESULTS.md]({link_prefix}RESULTS.md)." if brief else record["notes"], ""]
    return "\n".join(parts)


def write_results(records_dir, readme=None) -> Path:
    """Regenerate records/RESULTS.md (and the README's results section) from every record.json."""
    records_dir = Path(records_dir)
    records = [load_record(f) for f in sorted(records_dir.iterdir()) if (f / "record.json").exists()]
    for record in records:
        if record.get("plot"):
            plot_curves(record["loaded"], record["folder"], training=record.get("train_loss_plot", False))
        if record.get("speed_loss_plot"):
            plot_speed_vs_loss(record)
    body = ["# Results", "", "Written by `python scripts/compare.py --records` from the record.json files in this folder;",
            "every figure was measured on the GPU named, with the command and commit given.", ""]
    body += [record_section(r) for r in records]
    out = records_dir / "RESULTS.md"
    out.write_text("\n".join(body).rstrip() + "\n")
    if readme is not None and Path(readme).exists():
        shown = [r for r in records if r.get("readme", True)]
        update_readme(Path(readme), [results_index(shown)] + [record_section(r, "###", "records/", brief=True) for r in shown if r.get("headline")])
    return out


def results_index(records: list) -> str:
    """The README's table of records: each one's title (its finding) and folder; the full sections are in RESULTS.md."""
    lines = ["Every record, by date (each title states the finding; command, commit, tables and notes in "
             "[RESULTS.md](records/RESULTS.md) and the folder); the headline records follow in full.", "",
             "| result | record |", "|---|---|"]
    lines += [f"| {r['title']}{' (below)' if r.get('headline') else ''} | [{r['folder'].name}](records/{r['folder'].name}/) |" for r in records]
    return "\n".join(lines) + "\n"


def update_readme(readme: Path, sections: list[str]) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no results markers ({README_START} ... {README_END})")
    head, rest = text.split(README_START, 1)
    _, tail = rest.split(README_END, 1)
    readme.write_text(head + README_START + "\n\n" + "\n".join(sections).rstrip() + "\n\n" + README_END + tail)
