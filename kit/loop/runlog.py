"""Run directories: log.txt, config.json, metrics.jsonl, summary.json; progress display.

Only rank 0 writes. log.txt opens with the command, git commit, versions, the device, the
script's own source and that of every project file it imported (kit, a script it builds on), then
has one greppable line per step ("step 12/4768 | loss ..."). With a TensorBoard folder, every metrics
event also goes there as scalars ("train/loss", "val/val_loss", ...) at its step.
"""

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kit.core.errors import UserError
from kit.data.datasets import REPO_ROOT


def git_commit() -> str:
    """HEAD of the checkout (with -dirty for uncommitted changes); GIT_COMMIT overrides it for
    copies of the tree that carry no git history (an exported copy, a container image)."""
    if os.environ.get("GIT_COMMIT"):
        return os.environ["GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        if out.returncode != 0:
            return "unknown"
        commit = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        return commit + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def project_files_imported(script_path) -> list:
    """The project's files this process has imported besides the script: kit's modules and the scripts it builds
    on (a variant imports the baseline). With the script's own source they make the run reproducible from
    log.txt alone. A flattened script embeds them, and they are not files here: it logs only itself."""
    root, script = Path(REPO_ROOT).resolve(), Path(script_path).resolve()
    found = set()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if not file or not file.endswith(".py"):
            continue
        path = Path(file).resolve()
        own = (path.parent == root and path.name.startswith("train_gpt2")) or (root / "kit") in path.parents
        if own and path != script and path.exists():
            found.add(path)
    return sorted(found)


def default_run_dir(script: str) -> Path:
    """logs/<script>_<date>_<time>_<pid>, with a suffix where that exists (two runs of one process in one second)."""
    stamp = time.strftime("%Y%m%d_%H%M%S")
    base = REPO_ROOT / "logs" / f"{Path(script).stem}_{stamp}_{os.getpid()}"
    run_dir, n = base, 1
    while run_dir.exists():
        n += 1
        run_dir = base.with_name(f"{base.name}_{n}")
    return run_dir


RUN_FILES = ("config.json", "log.txt", "metrics.jsonl", "summary.json", "checkpoints")  # what a run writes into its directory


def holds_run(run_dir) -> bool:
    """Whether a folder already holds a run (a new run refuses it: kit.loop.train)."""
    return any((Path(run_dir) / name).exists() for name in RUN_FILES)


FINISHED = ("completed", "reached_target")  # a summary's statuses of a run that ended as planned


def read_summary(run_dir) -> dict:
    """A run directory's summary.json, or {} where there is none (yet) or it cannot be read."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())
    except (OSError, ValueError):
        return {}


def set_aside(run_dir) -> Path:
    """Move an earlier attempt's run directory to <dir>.attempt<N> (the first free N) so that a tool can run
    it again in the same place without mixing the two; returns where it went, or None if there was none."""
    run_dir = Path(run_dir)
    if not holds_run(run_dir):
        return None
    n = 1
    while run_dir.with_name(f"{run_dir.name}.attempt{n}").exists():
        n += 1
    target = run_dir.with_name(f"{run_dir.name}.attempt{n}")
    run_dir.rename(target)
    return target


def process_age_s() -> float:
    """Seconds since this process started (Linux, from /proc; 0 elsewhere): the interpreter and the imports
    before any of the kit's code runs are part of the user's wall clock too."""
    try:
        with open("/proc/self/stat") as stat, open("/proc/uptime") as uptime:
            started_ticks = int(stat.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime, after the command name
            return max(0.0, float(uptime.read().split()[0]) - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def versions() -> str:
    cuda = torch.version.cuda or "none"
    return f"python {platform.python_version()} | torch {torch.__version__} (cuda {cuda}) | numpy {np.__version__}"


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)


class RunLog:
    """Writes a run directory. With enabled=False (ranks > 0) every method does nothing."""

    def __init__(self, run_dir, enabled: bool = True, progress: str = "auto", total_steps: int = 0, tensorboard: str = "",
                 step_tokens: list = None):
        self.dir = Path(run_dir)
        self.enabled = enabled
        self.board = tensorboard_writer(tensorboard) if enabled and tensorboard else None
        self.use_bar = enabled and (progress == "bar" or (progress == "auto" and sys.stdout.isatty()))
        self.bar = None
        self.total_steps = total_steps
        self.tokens_after = tokens_after_each_step(step_tokens) if step_tokens else None
        if enabled:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._log = open(self.dir / "log.txt", "a", buffering=1)
            self._metrics = open(self.dir / "metrics.jsonl", "a", buffering=1)

    def header(self, command: list, script_path: str, device_line: str, config: dict) -> None:
        if not self.enabled:
            return
        write_json_atomic(self.dir / "config.json", config)
        lines = [
            f"command: {' '.join(command)}",
            f"git commit: {git_commit()}",
            f"versions: {versions()}",
            device_line,
            f"started: {time.strftime('%Y-%m-%d %H:%M:%S %Z')}",
        ]
        for line in lines:
            self.print(line)
        source = Path(script_path).read_text() if Path(script_path).exists() else ""
        self._log.write(f"----- source of {script_path} -----\n{source}\n----- end of source -----\n")
        for path in project_files_imported(script_path):
            self._log.write(f"----- source of {path.relative_to(REPO_ROOT)} -----\n{path.read_text()}\n----- end of source -----\n")

    def print(self, line: str) -> None:
        """A line for the console and log.txt (the console line goes above the bar)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)
        self._log.write(line + "\n")

    def metric(self, event: dict) -> None:
        if self.enabled:
            self._metrics.write(json.dumps(event) + "\n")
            if self.board is not None:
                for key, value in event.items():
                    if key not in ("type", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                        self.board.add_scalar(f"{event.get('type', 'event')}/{key}", value, event.get("step", 0))

    def step(self, step: int, event: dict) -> None:
        """One training step: a metrics event, a log line, and the bar or a console line."""
        if not self.enabled:
            return
        self.metric(event)
        line = (
            f"step {step}/{self.total_steps} | loss {event['loss']:.4f} | lr {event['lr']:.3e} | grad_norm {event['grad_norm']:.3f} | "
            f"{event['step_ms']:.1f} ms | {event['tokens_per_s']:,.0f} tok/s | train_time {event['train_time_ms'] / 1000:.1f}s"
            f"{time_left(self.seconds_left(step, event))}"
        )
        self._log.write(line + "\n")
        if self.use_bar:
            if self.bar is None:  # tqdm's own estimate assumes equal steps, which a batch schedule's are not: ours instead
                self.bar = tqdm(total=self.total_steps, initial=step - 1, unit="step", dynamic_ncols=True,
                                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]")
            self.bar.update(1)
            self.bar.set_postfix_str(f"loss {event['loss']:.3f} | {event['tokens_per_s']:,.0f} tok/s{time_left(self.seconds_left(step, event))}")
        else:
            print(line, flush=True)

    def seconds_left(self, step: int, event: dict) -> float:
        """Training seconds to the last step: the tokens the schedule still holds at this step's tokens/s (a batch
        schedule's later steps are longer), or, where the schedule's tokens are unknown, the steps left at this
        step's time."""
        if self.tokens_after is not None and step < len(self.tokens_after) and event.get("tokens_per_s"):
            return self.tokens_after[step] / event["tokens_per_s"]
        return (self.total_steps - step) * event["step_ms"] / 1000

    def summary(self, summary: dict) -> None:
        if self.enabled:
            write_json_atomic(self.dir / "summary.json", summary)

    def close(self) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.close()
            self.bar = None
        self._log.close()
        self._metrics.close()
        if self.board is not None:
            self.board.close()


def tensorboard_writer(folder: str):
    """A TensorBoard SummaryWriter for the folder, or a one-line error where the package is missing."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(f"--tensorboard {folder}: TensorBoard is not installed (pip install tensorboard), or leave the flag out") from None
    return SummaryWriter(log_dir=folder)


def tokens_after_each_step(step_tokens: list) -> list:
    """[tokens the run still trains on after step s for s = 0..len(step_tokens)] from each step's tokens."""
    after = [0] * (len(step_tokens) + 1)
    for s in range(len(step_tokens) - 1, -1, -1):
        after[s] = after[s + 1] + step_tokens[s]
    return after


def time_left(seconds: float) -> str:
    """' | ~2m31s to the last step', or '' when nothing is left."""
    if seconds is None or seconds <= 0:
        return ""
    seconds = round(seconds)
    return f" | ~{seconds // 60}m{seconds % 60:02d}s to the last step" if seconds >= 60 else f" | ~{seconds}s to the last step"
