"""The training loop every train_gpt2*.py script runs.

A script hands `main` a `Recipe`: its config class, how to build the model, how to build the
optimizers, and (optionally) its LR schedule. Everything else lives here: data, gradient
accumulation, DDP, evaluation, timing, logging, checkpoints, and clean exits on bad input.

Timing follows the public speedrun: `train_time` counts only the stretches of optimizer steps
between evaluations (wall clock, the GPU synchronised at both ends); compilation, the warm-up
pass, evaluation and checkpoints are excluded. Steps are queued without waiting for the GPU, so
the CPU prepares the next step while the GPU runs this one; every --sync-every steps the loop
waits, reads the losses back, logs the steps and checks them for divergence. Wall time is
everything from the start of `main`.
"""

import contextlib
import dataclasses
import json
import math
import os
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch.nn.parallel import DistributedDataParallel

from kit.core import checkpoint, gpus, hw
from kit.data import datasets
from kit.modeling import flops
from kit.core.config import config_dict, parse_config
from kit.core.errors import Interrupted, OutOfMemory, TrainingDiverged, UserError
from kit.data.loader import TrainStream, validation_batches
from kit.modeling.model import cache_custom_autograd_graphs, count_parameters
from kit.modeling.optim import set_learning_rates, warmup_cosine
from kit.loop import checks
from kit.loop.runlog import FINISHED, RunLog, default_run_dir, git_commit, holds_run, process_age_s, read_summary

MAX_AUTO_MICRO_BATCH = 128
CPU_AUTO_MICRO_BATCH = 16
MEMORY_HEADROOM = 0.85  # the auto micro-batch may use this share of GPU memory in its probe


@dataclass
class Recipe:
    """What a train script varies; the rest of the run is shared."""

    config_cls: type
    build_model: Callable  # cfg -> nn.Module whose forward(x, y) returns the loss
    build_optimizers: Callable  # (model, cfg) -> list of optimizers with 'base_lr' in each group
    script: str
    lr_schedule: Callable = warmup_cosine  # (step, cfg) -> LR multiplier
    description: str = ""
    before_step: Callable = None  # (step, model, optimizers, cfg): other schedules (windows, momentum), before each step and validation
    compile_model: Callable = torch.compile  # how --compile 1 compiles the model (e.g. block by block)
    ddp_find_unused: object = False  # True, or a function of the config, where steps may leave parameters without gradients (LayerDrop)
    warm_up_states: Callable = None  # (model, cfg) -> functions, each putting the model in a state the run will meet: the warm-up compiles every one
    trainer: type = None  # a Trainer subclass, for a script that changes one of its methods marked "a script's own" (default: Trainer)


def main(recipe: Recipe, argv=None) -> int:
    """Run a script's recipe; return the exit code (0 ok, else a UserError's code). A script run as a program
    ends its process here (end_process)."""
    try:
        (recipe.trainer or Trainer)(recipe, argv).run()
        code = 0
    except UserError as err:
        kind = "" if isinstance(err, Interrupted) else "error: "
        print(f"{Path(recipe.script).name}: {kind}{err}", file=sys.stderr, flush=True)
        code = err.exit_code
    finally:
        gpus.stop_emulating()
        hw.shutdown_distributed()
    if started_as_program(recipe.script):
        end_process(code)
    return code


def end_process(code: int) -> None:
    """Leave at once with this exit code. Everything the run writes is closed by now; Python's own teardown (every
    module and tensor freed one by one, Inductor's compile workers stopped, the CUDA context destroyed) would only
    add to the user's wait: 3.5 s after an H200 record run (records/2026-12-02_h200_speedrun_wall_time_seed5)."""
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


OTHERS_SLACK = 2 * 2**30  # the CUDA context and libraries' workspaces: memory a lone process still does not own


def crowded_gpu_note(batch: int, free: int, card: int, own_reserved: int, usable: int):
    """A warning when the micro-batch probe ran out of memory because other processes hold the GPU's
    memory (so this process could not reach what it may use), or None. Then the probe picks a smaller
    micro-batch than the card allows (one MoE run capped at 43 GiB chose 2, where alone it takes 64 in 66 GiB,
    and ran at 27-30 s a step)."""
    held_by_others = card - free - own_reserved
    if free + own_reserved >= usable or held_by_others < OTHERS_SLACK:
        return None
    return (f"warning: the micro-batch probe ran out of GPU memory at micro-batch {batch} while other processes held "
            f"{held_by_others / 2**30:.1f} GiB of the card; the micro-batch it picks may be smaller than the card allows "
            f"(start this run alone, or pass --micro-batch)")


def keep_metrics_up_to(path: Path, step: int) -> None:
    """A resumed run's metrics.jsonl cut back to what its checkpoint (taken after step `step`'s update) had
    seen: the events of earlier steps and step `step`'s training event; the rest is trained again."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            event = json.loads(line)
        except ValueError:  # a line torn by the interruption
            continue
        if event.get("step", 0) < step or (event.get("step") == step and event.get("type") == "train"):
            kept.append(line)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)


class StopSignals:
    """SIGINT (Ctrl-C) and SIGTERM (a preempted job) during training: the first asks the loop to save a
    checkpoint at the next step boundary and stop; a second stops at once. The handler only sets a flag
    (writing from it could interrupt a write to the same file); the loop reports it."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, at_once_hint: str = ""):
        self.requested = None
        self.at_once_hint = at_once_hint
        self.previous = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            self.previous = {sig: signal.signal(sig, self.handle) for sig in self.SIGNALS}
        return self

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        self.previous = {}

    def handle(self, signum, frame):
        name = signal.Signals(signum).name
        if self.requested:
            raise Interrupted(f"stopped at once by a second {name}{self.at_once_hint}")
        self.requested = name

    def agreed(self, distributed: bool, device) -> bool:
        """Whether to stop now; under DDP every rank stops at the same step if any rank was signalled."""
        if not distributed:
            return self.requested is not None
        flag = torch.tensor([1.0 if self.requested else 0.0], device=device)
        hw.all_reduce_sum(flag)
        return flag.item() > 0


def available_ram() -> int:
    """Bytes of RAM a new allocation can take now (Linux: MemAvailable); 0 where unknown."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0


def cpu_bytes_per_sequence(model, seq_len: int) -> int:
    """A generous estimate of one sequence's fp32 training memory on the CPU: per layer ~24 saved values per
    position and width plus the attention scores and their softmax (heads x seq_len^2 each), and the logits
    with their softmax and gradient; 0 for a model that does not describe its shape."""
    config = getattr(model, "config", None)
    layers, width, heads = (getattr(config, name, 0) for name in ("n_layer", "n_embd", "n_head"))
    vocab = getattr(config, "vocab_size", 50304)
    if not (layers and width and heads):
        return 0
    return 4 * seq_len * (layers * (24 * width + 2 * heads * seq_len) + 3 * vocab)


def divisors_descending(n: int, at_most: int) -> list[int]:
    return [d for d in range(min(n, at_most), 0, -1) if n % d == 0]


@dataclass
class QueuedStep:
    """A step the GPU may still be running: its numbers stay on the device until the next sync."""

    step: int
    tokens: int  # seen after this step
    step_tokens: int
    loss: torch.Tensor
    grad_norm: torch.Tensor
    lr: float
    flops: float  # the model's FLOPs at its state during the step (windows that grow)
    fp8_flops: float


class StepClock:
    """Times a stretch of steps without waiting for the GPU after each one.

    `start` synchronises and starts the wall clock; `mark` notes the end of a step (a CUDA event on
    the GPU, the time on the CPU, which runs each step synchronously); `stop` synchronises and
    returns the stretch's wall time and each step's share. A step's share is the GPU time between its
    mark and the one before, so idle time while the CPU catches up counts against the step it delays;
    what the marks do not cover (the first launch, the final sync) goes to the first step, so the
    shares add up to the wall time."""

    def __init__(self, device: torch.device):
        self.device = device
        self.use_events = device.type == "cuda"
        self.t0, self.marks = None, []

    def new_mark(self):
        if not self.use_events:
            return time.perf_counter()
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def start(self) -> None:
        hw.synchronize(self.device)
        self.t0 = time.perf_counter()
        self.marks = [self.new_mark()]

    def mark(self) -> None:
        self.marks.append(self.new_mark())

    def stop(self) -> tuple[float, list[float]]:
        hw.synchronize(self.device)
        wall_ms = (time.perf_counter() - self.t0) * 1000
        pairs = zip(self.marks, self.marks[1:])
        shares = [a.elapsed_time(b) if self.use_events else (b - a) * 1000 for a, b in pairs]
        if shares:
            shares[0] += wall_ms - sum(shares)
        self.t0, self.marks = None, []
        return wall_ms, shares


COMPILE_CACHE_COUNTERS = (("inductor", "fxgraph_cache_hit"), ("inductor", "fxgraph_cache_miss"), ("inductor", "fxgraph_cache_bypass"),
                          ("aot_autograd", "autograd_cache_hit"), ("aot_autograd", "autograd_cache_miss"),
                          ("aot_autograd", "autograd_cache_bypass"))
# where torch says why a graph could not use a compile cache (at INFO, which the console does not show)
CACHE_BYPASS_LOGGERS = ("torch._inductor.codecache", "torch._functorch._aot_autograd.autograd_cache")


@contextlib.contextmanager
def compile_cache_bypass_reasons():
    """Collects torch's reasons for bypassing Inductor's or AOTAutograd's cache while the block runs: a graph that
    bypasses is traced and compiled again by every run, however warm the cache (yields the list of reasons)."""
    import logging

    reasons = []

    class Collect(logging.Handler):
        def emit(self, record):
            message = record.getMessage()
            if message.startswith("Bypassing") and message[:300] not in reasons:  # torch's words for both caches
                reasons.append(message[:300])

    handler, saved = Collect(logging.INFO), []
    for name in CACHE_BYPASS_LOGGERS:
        logger = logging.getLogger(name)
        saved.append((logger, logger.level, logger.propagate))
        logger.setLevel(logging.INFO)
        logger.propagate = False  # the INFO lines go to the list only, not to torch's console handlers
        logger.addHandler(handler)
    try:
        yield reasons
    finally:
        for logger, level, propagate in saved:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate


def runs_as_program(script: str) -> bool:
    """Whether this process is `python script` (or one rank of torchrun's), not other code calling the script's main."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return bool(main_file) and Path(main_file).resolve() == Path(script).resolve()


def started_as_program(script: str) -> bool:
    """Whether the interpreter was started to run this file (`python [options] script ...`, as torchrun starts each
    rank), not code that runs it inside its own process (runpy in a harness, python -c): only such a process may be
    ended by the script."""
    if not runs_as_program(script):
        return False
    for arg in list(getattr(sys, "orig_argv", []))[1:]:
        if arg in ("-c", "-m"):
            return False
        if not arg.startswith("-") and Path(arg).resolve() == Path(script).resolve():
            return True
    return False


def compile_cache_counts() -> dict:
    """This process's hits and misses so far in Inductor's FX-graph cache and AOTAutograd's cache (torch's counters):
    a warm-up part with hits only loaded its graphs; with misses it compiled them."""
    from torch._dynamo.utils import counters

    return {name: counters[group][name] for group, name in COMPILE_CACHE_COUNTERS}


# torch's own compile timers (torch._dynamo.utils.compile_times) that say where a compiled warm-up part's seconds went:
# (label, timer); "loading or building code" (the generated module loaded; on a cache miss its kernels built) is part of
# the backend's time; the backward is compiled, or loaded, at the first backward
COMPILE_PHASES = (("Dynamo's trace", "bytecode_tracing"), ("guards", "build_guards"), ("backend", "OutputGraph.call_user_compiler"),
                  ("loading or building code", "PyCodeCache.load_by_key_path"), ("backward", "backward._backward_impl"))
COMPILE_TOTALS = ("_compile.compile_inner", "backward._backward_impl")  # all of compiling; the rest of a part ran the passes
# Inductor's kernels with several configurations time each at their first launch, inside the running part, unless the
# compile cache holds the winner
RUNTIME_AUTOTUNING = ("CachingAutotuner.benchmark_all_configs", "CachingAutotuner.coordinate_descent_tuning",
                      "CachingAutotuner.combo_sequential_autotune")


def compile_phase_seconds() -> dict:
    """torch's compile timers of this process so far, seconds by timer name ({} where this torch has none)."""
    try:
        from torch._dynamo.utils import compile_times

        names, seconds = compile_times(repr="csv", aggregate=True)
        return {name: float(value) for name, value in zip(names, seconds)}
    except Exception:  # a private API: a torch without it must not stop a run
        return {}


def compile_phases(before: dict, after: dict, part_s: float) -> dict:
    """Seconds of each COMPILE_PHASES label between two readings of compile_phase_seconds, and "running": the rest of the
    part's part_s seconds, its passes' first run with the kernels ({} where the part compiled nothing)."""
    spent = {name: after[name] - before.get(name, 0.0) for name in after}
    if sum(spent.get(name, 0.0) for name in COMPILE_TOTALS) < 0.005:
        return {}
    phases = {label: round(spent.get(name, 0.0), 2) for label, name in COMPILE_PHASES}
    phases["running"] = round(max(0.0, part_s - sum(spent.get(name, 0.0) for name in COMPILE_TOTALS)), 2)
    phases["Inductor's autotuning"] = round(sum(spent.get(name, 0.0) for name in RUNTIME_AUTOTUNING), 2)  # part of running
    return phases


def phase_note(phases: dict) -> str:
    """'Dynamo's trace 4.1s, guards 0.9s, backend 3.3s (loading or building code 2.4s), backward 0.2s, running 4.6s
    (Inductor's autotuning 1.2s)': each sub-phase inside the phase it belongs to, where it took any time."""
    inside = {"backend": "loading or building code", "running": "Inductor's autotuning"}
    notes = []
    for label, seconds in phases.items():
        if label in inside.values():
            continue
        sub = phases.get(inside.get(label))
        notes.append(f"{label} {seconds:.1f}s" + (f" ({inside[label]} {sub:.1f}s)" if sub else ""))
    return ", ".join(notes)


def cache_note(counts: dict) -> str:
    """' [Inductor cache 2 hit 1 missed, AOTAutograd cache 1 hit 0 missed]' from a part's counts; '' where it met neither cache
    (the caches are separate: a graph AOTAutograd's cache serves can count in Inductor's too)."""
    if not counts:
        return ""
    caches = (("Inductor", "fxgraph_cache"), ("AOTAutograd", "autograd_cache"))
    notes = [f"{label} cache {counts.get(key + '_hit', 0)} hit {counts.get(key + '_miss', 0)} missed"
             + (f" {counts[key + '_bypass']} bypassed" if counts.get(key + "_bypass") else "") for label, key in caches
             if counts.get(key + "_hit") or counts.get(key + "_miss") or counts.get(key + "_bypass")]
    return f" [{', '.join(notes)}]"


@torch.no_grad()
def validation_loss_sums(model, batches, device: torch.device, dtype: torch.dtype, to_device=None) -> torch.Tensor:
    """[sum of the token losses, token count] of model(x, y) over batches of (x, y), float64 on the device (the
    sum stays there: no copy to wait for per batch). to_device moves a batch (default: .to(device))."""
    loss_sum, count = torch.zeros((), device=device, dtype=torch.float64), 0
    for batch in batches:
        x, y = to_device(batch) if to_device else (t.to(device) for t in batch)
        with hw.autocast(device, dtype):
            loss = model(x, y)
        loss_sum += loss.double() * y.numel()
        count += y.numel()
    return torch.stack([loss_sum, loss_sum.new_tensor(float(count))])


class Trainer:
    def __init__(self, recipe: Recipe, argv=None):
        # a script run as a program: its clock starts with the process (the interpreter, torch and the kit loading);
        # called from other code (a test, a notebook), with the trainer
        self.imports_s = process_age_s() if runs_as_program(recipe.script) else 0.0
        self.started = time.perf_counter() - self.imports_s  # the wall clock starts with the process
        self.startup_parts, self.startup_mark = {}, time.perf_counter()  # where the start-up after the imports goes (startup_done)
        self.recipe = recipe
        self.ddp = hw.dist_from_env()
        self.cfg, self.explicit = parse_config(recipe.config_cls, argv, self.ddp.world_size, recipe.description)
        self.device = hw.pick_device(self.cfg.device, self.ddp)
        hw.init_distributed(self.ddp, self.device)
        self.dtype = hw.pick_dtype(self.cfg.dtype, self.device)
        self.audit_note, self.inductor_audit = None, None
        if self.cfg.emulate_gpu:  # before the model is built: its kernel paths follow the card's capability
            profile = gpus.emulate(self.cfg.emulate_gpu, self.device)
            self.audit_note = gpus.audit_kernels(profile, self.own_kernel_builds())  # stops here, in one line, where one would not fit
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
            if self.cfg.memory_cap_gib:  # e.g. prove that a configuration fits a 24 GB card on a bigger one (with an emulated card's cap: the lower)
                total = torch.cuda.get_device_properties(self.device).total_memory
                torch.cuda.set_per_process_memory_fraction(self.usable_memory() / total, self.device)
        if self.cfg.memory_cap_gib and self.device.type != "cuda":
            raise UserError(f"--memory-cap-gib caps a GPU's memory, and this run is on the {self.device.type}: leave it out, or train on a GPU")
        self.argv = sys.argv if argv is None else [recipe.script, *argv]
        self.startup_done("flags and device")

    def startup_done(self, part: str) -> None:
        """The seconds since the previous start-up part (or the imports) go to this one (summary.json's startup_parts_s)."""
        now = time.perf_counter()
        self.startup_parts[part] = round(self.startup_parts.get(part, 0.0) + now - self.startup_mark, 3)
        self.startup_mark = now

    # ----- a script's own: a subclass (Recipe.trainer) overrides these -----

    def own_kernel_builds(self) -> list:
        """The Triton kernels of the kit's own this run launches, as kernel_builds lists them (what an emulated
        run audits against the card's shared memory). Default: none."""
        return []

    def validate_at(self, step: int) -> bool:
        """Whether a check (a validation, or a screen before one) comes after this step; the first and
        last step are validated in any case. Default: every --val-every steps."""
        return self.on_val_every(step)

    def optimizers_due(self) -> list:
        """The optimizers that step after this step (self.step, 0-based); the others' parameters keep adding up
        their gradients until theirs is due. Default: every optimizer, every step."""
        return self.optimizers

    def setup_seconds(self) -> float:
        """Seconds of one-time work this variant needs before training that the baseline does not (RETRO's index),
        for comparisons at equal wall time (summary.json's setup_s; scripts/bench.py --charge-setup). Default: 0."""
        return 0.0

    def micro_batch_rule(self, usable_bytes: int):
        """Sequences per micro-batch on a GPU with this much usable memory, or None to probe for it."""
        return None

    def batch_share(self, step: int, cfg) -> float:
        """Share of --batch-tokens that step `step` trains on under `cfg` (a batch-size schedule); 1: all."""
        return 1.0

    def batch_shares(self) -> list:
        """The shares batch_share takes (a schedule in stages), each to be a whole number of micro-batches."""
        return []

    def run_report(self) -> dict:
        """A script's own end-of-run figures ({name: figure}), in summary.json and the log."""
        return {}

    # ----- set-up -----

    def setup(self) -> None:
        cfg, ddp = self.cfg, self.ddp
        torch.manual_seed(cfg.seed)
        resumed_from = checkpoint.find(cfg.resume) if cfg.resume else None
        run_dir = self.claim_run_dir(resumed_from)  # before any download or file: a refused run leaves nothing behind
        self.files = datasets.resolve(cfg, ddp.is_main)
        hw.barrier()  # rank 0 downloads or generates data first
        self.startup_done("data")
        chosen = "target_loss" in self.explicit or (cfg.resume and cfg.target_loss is not None)  # given now, or the resumed run's
        self.target = cfg.target_loss if chosen else datasets.TARGET_LOSS[self.files.name]
        cfg.target_loss = self.target  # config.json records the target the run used, not the flag's empty default
        try:  # a combination of flags a model's constructor rejects (MoE's --top-k above --experts): one line
            model = self.recipe.build_model(cfg)
            self.startup_done("model")
            self.model = model.to(self.device)
            self.startup_done("model to the device")
        except ValueError as err:
            raise UserError(str(err).strip().splitlines()[0]) from None
        self.seqs_per_rank = cfg.batch_tokens // (cfg.seq_len * ddp.world_size)
        self.probe_note = None  # set by the micro-batch probe when other processes crowd the GPU; printed once the log exists
        self.batch_note = None  # set where the batch schedule's stages cannot be whole micro-batches
        self.micro_batch = self.fit_batch_shares(cfg.micro_batch or self.auto_micro_batch(), bool(cfg.micro_batch))
        self.accum_steps = self.seqs_per_rank // self.micro_batch
        # evaluation batches all of one size (a divisor of each rank's share), so a compiled model meets one shape
        val_seqs_per_rank = max(1, cfg.val_tokens // cfg.seq_len // ddp.world_size)
        self.eval_micro_batch = divisors_descending(val_seqs_per_rank, self.micro_batch)[0]
        self.stream = TrainStream(self.files.train, cfg.seq_len, self.micro_batch, ddp.rank, ddp.world_size, cfg.align_bos, cfg.data_order_seed)
        self.optimizers = self.recipe.build_optimizers(self.model, cfg)
        self.startup_done("batches and optimizers")
        self.step, self.train_time_ms, self.tokens_seen = 0, 0.0, 0
        self.earlier = {"wall_time_s": 0.0, "eval_time_s": 0.0, "warmup_s": 0.0, "resumed_at": []}  # the run's parts before this one
        if resumed_from:
            payload = checkpoint.load(resumed_from, self.model, self.optimizers, self.stream)
            self.step, self.train_time_ms = payload["step"], payload["train_time_ms"]
            self.tokens_seen = payload["tokens"]
            self.check_new_length(payload)
            self.earlier.update(payload.get("times", {}))
            if ddp.is_main and self.resuming_in_place:  # the wall time of the part that stopped, from the summary it wrote
                self.earlier["wall_time_s"] = max(self.earlier["wall_time_s"], float(read_summary(run_dir).get("wall_time_s") or 0.0))
                keep_metrics_up_to(run_dir / "metrics.jsonl", self.step)
            self.earlier["resumed_at"] = [*self.earlier["resumed_at"], self.step]
        self.start_step = self.step
        self.status, self.warmup_s, self.eval_time_s = "failed", None, 0.0
        self.startup_s, self.warmup_parts, self.warmup_cache, self.warmup_bypass_reasons, self.warmup_phases = None, {}, {}, [], {}
        self.params_without_grad = []
        self.retries_before_loop = None  # the CUDA allocator's retries when the training loop began
        self.last_val, self.reached_at = None, None
        self.last_screen, self.next_screen_step = None, 0  # (step, loss) of the latest screen; checks before next_screen_step skipped
        self.step_ms, self.step_tokens_per_s, self.tokens_this_run, self.time_this_run_ms = [], [], 0, 0.0
        self.flops_this_run, self.fp8_flops_this_run, self.step_mfu = 0.0, 0.0, []
        self.clock, self.queued = StepClock(self.device), []
        self.log = RunLog(run_dir, ddp.is_main, cfg.progress, cfg.max_steps, cfg.tensorboard,
                          step_tokens=[self.step_tokens_at(s) for s in range(cfg.stop_at_step or cfg.max_steps)])  # the time left: to the stop
        attention = getattr(getattr(self.model, "config", None), "attn", cfg.attn)  # what the model resolved, e.g. from "auto"
        self.log.header(self.argv, self.recipe.script, hw.describe_device(self.device, self.dtype, attention), config_dict(cfg))
        self.describe_run(resumed_from)
        for note in (self.audit_note, self.probe_note, self.batch_note):
            if note:
                self.log.print(note)
        if cfg.compile:
            cache_custom_autograd_graphs()
        self.train_model = self.recipe.compile_model(self.model) if cfg.compile else self.model
        self.eval_model = self.train_model
        if ddp.enabled:
            self.train_model = DistributedDataParallel(self.train_model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
                                                       find_unused_parameters=self.ddp_find_unused())

    def claim_run_dir(self, resumed_from) -> Path:
        """The run directory: a resumed run's own, or a fresh one. A folder that holds another run (its
        config, log, metrics, summary or checkpoints) is refused, so two runs never share one."""
        cfg = self.cfg
        if resumed_from and "out_dir" not in self.explicit:
            run_dir = checkpoint.run_dir_of(resumed_from)
        else:
            run_dir = Path(cfg.out_dir) if cfg.out_dir else default_run_dir(self.recipe.script)
        resuming_in_place = resumed_from is not None and run_dir.resolve() == checkpoint.run_dir_of(resumed_from).resolve()
        self.resuming_in_place = resuming_in_place
        if not resuming_in_place and holds_run(run_dir):
            raise UserError(f"--out-dir {run_dir} holds another run; continue it with --resume {run_dir}, or give another --out-dir")
        if resuming_in_place:
            step = checkpoint.step_of(resumed_from)
            newer = [p.name for p in sorted((run_dir / checkpoint.CHECKPOINT_DIR).glob("ckpt_step*.pt")) if (checkpoint.step_of(p) or 0) > (step or 0)]
            if newer:
                raise UserError(f"--resume {resumed_from}: the run has newer checkpoints ({', '.join(newer)}); resume from the newest "
                                f"(--resume {run_dir}), or branch off into a fresh --out-dir")
            summary = read_summary(run_dir)
            finished = summary.get("steps") if summary.get("status") in FINISHED else None
            if finished is not None and step is not None and finished > step:
                raise UserError(f"--resume {run_dir}: the run finished at step {finished}, after its newest checkpoint (step {step}); "
                                "resuming would train those steps again: start a new run, or branch off into a fresh --out-dir")
        return run_dir

    def check_new_length(self, payload: dict) -> None:
        """--max-steps on --resume: allowed only where the step the run resumes at keeps its LR multiplier and
        batch share under the new length (e.g. a constant phase before a cooldown); where they would jump
        (a cosine or cooldown that depends on the length), one line says so."""
        saved = dict(payload.get("config") or {})
        old_steps = saved.get("max_steps", self.cfg.max_steps)
        if old_steps == self.cfg.max_steps:
            return
        if self.step >= self.cfg.max_steps:
            raise UserError(f"--max-steps {self.cfg.max_steps}: the run is at step {self.step} already")
        before = dataclasses.replace(self.cfg, max_steps=old_steps)
        schedules = [self.recipe.lr_schedule, self.batch_share]
        for schedule in schedules:
            was, now = schedule(self.step, before), schedule(self.step, self.cfg)
            if not math.isclose(was, now, rel_tol=1e-9, abs_tol=1e-12):
                raise UserError(f"--max-steps {self.cfg.max_steps}: at step {self.step} the {old_steps}-step schedule gives x{was:.4g}, "
                                f"the {self.cfg.max_steps}-step one x{now:.4g}; the run would jump, so its length stays {old_steps} "
                                f"(start a new run with --max-steps {self.cfg.max_steps})")

    def alloc_retries(self):
        """Times the CUDA allocator found no free memory, emptied its cache and tried again, so far (None off CUDA)."""
        return torch.cuda.memory_stats(self.device).get("num_alloc_retries", 0) if self.device.type == "cuda" else None

    def retries_in_loop(self):
        """The allocator's retries since the training loop began (None off CUDA or before the loop)."""
        now, before = self.alloc_retries(), self.retries_before_loop
        return None if now is None or before is None else now - before

    def ddp_find_unused(self) -> bool:
        unused = self.recipe.ddp_find_unused
        return bool(unused(self.cfg) if callable(unused) else unused)

    def times_so_far(self) -> dict:
        """The run's clocks over all its parts, this one up to now: for checkpoints and the summary."""
        return {"wall_time_s": self.earlier["wall_time_s"] + time.perf_counter() - self.started,
                "eval_time_s": self.earlier["eval_time_s"] + self.eval_time_s,
                "warmup_s": self.earlier["warmup_s"] + (self.warmup_s or 0.0),
                "resumed_at": self.earlier["resumed_at"]}

    def describe_run(self, resumed_from) -> None:
        cfg = self.cfg
        self.n_params = count_parameters(self.model)
        if hasattr(self.model, "flops_per_token"):  # a model whose attention spans less than seq_len counts itself
            self.flops_per_token = self.model.flops_per_token(cfg.seq_len)
        else:
            model_config = getattr(self.model, "config", None)
            width, layers = getattr(model_config, "n_embd", 0), getattr(model_config, "n_layer", 0)
            self.flops_per_token = flops.flops_per_token(self.model, layers, width, cfg.seq_len)
        self.peak_flops = hw.peak_flops(hw.device_name(self.device))
        self.fp8_peak_flops = hw.peak_flops(hw.device_name(self.device), hw.PEAK_FP8_FLOPS)
        self.log.print(
            f"model: {cfg.model_size} ({self.n_params / 1e6:.2f}M parameters, {self.flops_per_token / 1e9:.3f} GFLOP per training token) | "
            f"data: {self.files.name} ({len(self.files.train)} train shard(s), val {self.files.val.name}) | target: {self.target}"
        )
        self.log.print(
            f"batch: {cfg.batch_tokens} tokens/step = {self.ddp.world_size} rank(s) x {self.accum_steps} accumulation step(s) x "
            f"micro-batch {self.micro_batch} x seq {cfg.seq_len} | steps: {cfg.max_steps} | compile: {cfg.compile} | fused Adam(W): {cfg.fused_adamw} | sync every {cfg.sync_every} steps"
        )
        if hasattr(self.model, "describe_paths"):
            self.log.print(f"kernel paths: {self.model.describe_paths()}")
        if self.device.type == "cuda":
            self.log.print(gpus.describe_profile(self.device))
        if resumed_from:
            self.log.print(f"resumed from {resumed_from} at step {self.step} (train time so far {self.train_time_ms / 1000:.1f}s)")

    def cpu_micro_batch(self) -> int:
        """On the CPU: the largest micro-batch (at most 16) whose estimated training memory fits in 70% of the
        RAM available now, with the weights and the optimizer state; one line where not even one sequence fits
        (the 124M model on a small machine, which the kernel's out-of-memory killer would stop without a word)."""
        available, per_sequence = available_ram(), cpu_bytes_per_sequence(self.model, self.cfg.seq_len)
        fixed = 16 * count_parameters(self.model)  # fp32 weights, gradients and Adam's two moments
        if not available or not per_sequence:
            return divisors_descending(self.seqs_per_rank, CPU_AUTO_MICRO_BATCH)[0]
        fitting = int((0.7 * available - fixed) // per_sequence)
        if fitting < 1:
            need = (fixed + per_sequence) / 0.7 / 2**30
            raise UserError(f"--model-size {self.cfg.model_size} at --seq-len {self.cfg.seq_len} needs ~{need:.1f} GiB of RAM on the CPU "
                            f"for one sequence, and {available / 2**30:.1f} GiB is available: use --model-size tiny, a shorter --seq-len, or a GPU")
        return divisors_descending(self.seqs_per_rank, min(CPU_AUTO_MICRO_BATCH, fitting))[0]

    def auto_micro_batch(self) -> int:
        """The largest micro-batch (a divisor of the per-rank sequences) whose fwd+bwd fits."""
        if self.device.type != "cuda":
            return self.cpu_micro_batch()
        total = self.usable_memory()
        wanted = self.micro_batch_rule(total)  # models whose probe would be misleading (e.g. eager FlexAttention)
        if wanted is not None:
            return divisors_descending(self.seqs_per_rank, max(1, wanted))[0]
        chosen = 1
        for b in divisors_descending(self.seqs_per_rank, MAX_AUTO_MICRO_BATCH):
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            try:
                self.forward_backward(self.model, self.random_batch(b))
                fits = torch.cuda.max_memory_allocated(self.device) < MEMORY_HEADROOM * total
            except torch.OutOfMemoryError:
                fits = False
                free, card = torch.cuda.mem_get_info(self.device)
                self.probe_note = self.probe_note or crowded_gpu_note(b, free, card, torch.cuda.memory_reserved(self.device), total)
            self.model.zero_grad(set_to_none=True)
            if fits:
                chosen = b
                break
        torch.cuda.empty_cache()
        return hw.all_reduce_min(chosen, self.device)

    def fit_batch_shares(self, micro_batch: int, given: bool) -> int:
        """The micro-batch, lowered where that makes every share of the recipe's staged batch schedule a
        whole number of micro-batches (never below what memory allows: only a divisor that fits is
        taken). Where none does (or --micro-batch was given), each step takes the nearest whole number
        of micro-batches, and the log says so."""
        shares = self.batch_shares()

        def fits(micro):
            accum = self.seqs_per_rank // micro
            return all(abs(share * accum - round(share * accum)) < 1e-6 for share in shares)

        if fits(micro_batch):
            return micro_batch
        exact = [] if given else [d for d in divisors_descending(self.seqs_per_rank, micro_batch) if fits(d)]
        if exact:
            return exact[0]
        self.batch_note = (f"note: the batch schedule's stages ({', '.join(f'{s:.3g}' for s in shares)} of the batch) are not whole micro-batches "
                           f"of {micro_batch} of the {self.seqs_per_rank} sequences per rank and step; each step takes the nearest whole number")
        return micro_batch

    def usable_memory(self) -> int:
        """GPU memory this process may use: the card's, or --memory-cap-gib (enforced by PyTorch)."""
        total = torch.cuda.get_device_properties(self.device).total_memory
        caps = [int(gib * 2**30) for gib in (self.cfg.memory_cap_gib, gpus.emulated() and gpus.emulated().memory_gib) if gib]
        return min([total, *caps])

    def random_batch(self, batch: int):
        vocab = getattr(getattr(self.model, "config", None), "vocab_size", 50257)
        x = torch.randint(0, vocab, (batch, self.cfg.seq_len + 1), device=self.device)
        return x[:, :-1].contiguous(), x[:, 1:].contiguous()

    # ----- one step -----

    def forward_backward(self, model, batch, scale: float = 1.0):
        x, y = batch
        with hw.autocast(self.device, self.dtype):
            loss = model(x, y)
        (loss * scale).backward()
        return loss.detach()

    def to_device(self, batch):
        x, y = batch
        if self.device.type == "cuda":
            return x.pin_memory().to(self.device, non_blocking=True), y.pin_memory().to(self.device, non_blocking=True)
        return x, y

    def accum_steps_at(self, step: int) -> int:
        """Micro-steps of this optimizer step: all of them, or the share a batch-size schedule gives it."""
        return max(1, round(self.accum_steps * self.batch_share(step, self.cfg)))

    def step_tokens_at(self, step: int) -> int:
        """Tokens of the optimizer step that follows step `step` (0-based), over all ranks."""
        return self.accum_steps_at(step) * self.micro_batch * self.cfg.seq_len * self.ddp.world_size

    def train_step(self, accum_steps: int) -> tuple[torch.Tensor, torch.Tensor, float]:
        """One optimizer step over accum_steps micro-batches, queued on the device; returns (loss, grad_norm, lr),
        the first two as device tensors (reading them would wait for the GPU)."""
        total = torch.zeros((), device=self.device)
        for i in range(accum_steps):
            last = i == accum_steps - 1
            sync = contextlib.nullcontext() if (last or not self.ddp.enabled) else self.train_model.no_sync()
            with sync:
                total += self.forward_backward(self.train_model, self.to_device(self.stream.next_batch()), 1.0 / accum_steps)
        clip = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        lr = set_learning_rates(self.optimizers, self.recipe.lr_schedule(self.step, self.cfg))
        due = self.optimizers_due()
        for opt in due:
            opt.step()
        if len(due) == len(self.optimizers):
            self.model.zero_grad(set_to_none=True)
        else:  # the others' gradients add up over the steps until theirs (a checkpoint keeps them)
            for opt in due:
                opt.zero_grad(set_to_none=True)
        loss = hw.all_reduce_sum(total / accum_steps) / self.ddp.world_size
        return loss, grad_norm.detach(), lr

    def warm_up(self) -> float:
        """Untimed passes that compile and set up kernels, so the training time excludes them.

        One fwd+bwd on the first real batch (same shapes and strides as training, so a compiled
        model does not recompile at step 1; the stream is rewound and its gradients dropped, a resumed run's own kept), once
        in each of the recipe's warm_up_states (graphs that change during the run, such as the
        offsets multi-token prediction still trains; before_step sets the real state at step 1),
        and one no-grad forward for evaluation (where the run validates at all); optimizers with compiled parts (Muon) compile them
        on zeros, leaving weights and optimizer state untouched.
        """
        t0 = time.perf_counter()
        parts, mark, cached, timers = {}, [t0], [compile_cache_counts()], [compile_phase_seconds()]

        def part_done(name: str) -> None:  # where the warm-up's seconds go, and what it loaded from the compile cache
            hw.synchronize(self.device)
            mark.append(time.perf_counter())
            cached.append(compile_cache_counts())
            timers.append(compile_phase_seconds())
            parts[name] = mark[-1] - mark[-2]
            counts = {k: cached[-1][k] - cached[-2][k] for k in cached[-1] if cached[-1][k] > cached[-2][k]}
            if counts:
                self.warmup_cache[name] = counts
            phases = compile_phases(timers[-2], timers[-1], parts[name])
            if phases:
                self.warmup_phases[name] = phases

        position = self.stream.state_dict()
        batch = self.to_device(self.stream.next_batch())
        self.stream.load_state_dict(position)
        states = self.recipe.warm_up_states(self.model, self.cfg) if self.recipe.warm_up_states else [lambda: None]
        pending = {p: p.grad for p in self.model.parameters() if p.grad is not None}  # a resumed run's, for an optimizer not yet due
        self.model.zero_grad(set_to_none=True)
        never = [name for name, p in self.model.named_parameters() if p.requires_grad]
        for enter_state in states:
            enter_state()
            self.forward_backward(self.train_model, batch)
            # the states are every graph the run will meet: a parameter none of them gives a gradient never trains
            no_grad = {name for name, p in self.model.named_parameters() if p.grad is None}
            never = [name for name in never if name in no_grad]
            self.model.zero_grad(set_to_none=True)
        self.params_without_grad = never
        for p, grad in pending.items():
            p.grad = grad
        part_done(f"training graph{'s' if len(states) > 1 else ''}")
        for opt in self.optimizers:
            if hasattr(opt, "warm_up"):
                opt.warm_up()
        part_done("optimizers")
        if self.validates_before_the_end():  # a speed run stopped before any check needs no evaluation graph
            with torch.no_grad(), hw.autocast(self.device, self.dtype):
                self.eval_model.eval()
                for enter_state in states:  # a state that changes the model's graph (a tied embedding) changes the evaluation's too
                    enter_state()
                    self.eval_model(*(t[: self.eval_micro_batch] for t in batch))  # the evaluation batch shape
                self.eval_model.train()
            part_done("evaluation graph")
        self.warmup_parts = {name: round(seconds, 2) for name, seconds in parts.items()}
        return time.perf_counter() - t0

    # ----- evaluation -----

    def validates_before_the_end(self) -> bool:
        """Whether this run checks the loss at all: always where it runs to --max-steps (the last step is validated);
        with --stop-at-step, where a check falls on a step from here to the stop."""
        end = self.cfg.stop_at_step or self.cfg.max_steps
        return end == self.cfg.max_steps or any(self.validate_at(step) for step in range(self.step, end + 1))

    def loss_sums(self, path, strict: bool, tokens: int = None, first_seq: int = 0) -> torch.Tensor:
        """[sum of the token losses, token count] over a validation shard's sequences from first_seq up to
        `tokens` (default --val-tokens), summed over the ranks; float64 on the device."""
        self.eval_model.eval()
        batches = validation_batches(path, tokens or self.cfg.val_tokens, self.cfg.seq_len, self.eval_micro_batch, self.ddp.rank,
                                     self.ddp.world_size, strict, first_seq)
        total = validation_loss_sums(self.eval_model, batches, self.device, self.dtype, self.to_device)
        self.eval_model.train()
        return hw.all_reduce_sum(total)

    def evaluate(self, path, strict: bool, tokens: int = None) -> float:
        """Mean loss over the first `tokens` (default --val-tokens) tokens of a validation shard."""
        total = self.loss_sums(path, strict, tokens)
        return (total[0] / total[1]).item()

    def on_val_every(self, step: int = None) -> bool:
        step = self.step if step is None else step
        return self.cfg.val_every > 0 and step % self.cfg.val_every == 0

    def regular_validation(self) -> bool:
        """The first and last step and every --val-every: always validated in full."""
        return self.on_val_every() or self.step in (0, self.cfg.max_steps)

    def screen(self):
        """At a check between the regular validations: (the first --val-screen-tokens' loss sums, whether
        the full validation is skipped); (None, False) where there is no screen. Above target + margin
        the full validation is skipped: a skipped check can only delay the measured crossing."""
        if not self.cfg.val_screen_tokens or self.target is None or self.regular_validation():
            return None, False
        t0 = time.perf_counter()
        sums = self.loss_sums(self.files.val, strict=False, tokens=self.cfg.val_screen_tokens)  # whole micro-batches: no new shape
        loss = (sums[0] / sums[1]).item()
        event = {"type": "val_screen", "step": self.step, "tokens": self.tokens_seen, "train_time_ms": self.train_time_ms,
                 "screen_loss": loss, "eval_s": time.perf_counter() - t0}
        self.eval_time_s += event["eval_s"]
        skipped = loss > self.target + self.cfg.val_screen_margin
        if skipped:
            skip = self.screen_skip_steps(loss)
            self.next_screen_step = self.step + skip
            event["skip_steps"] = skip
            ahead = f"; next screen from step {self.next_screen_step}" if skip else ""
            self.log.print(f"screen step {self.step}/{self.cfg.max_steps} | first {self.cfg.val_screen_tokens:,} val tokens {loss:.4f} "
                           f"> target + {self.cfg.val_screen_margin}: no full validation{ahead} | eval {event['eval_s']:.1f}s")
        self.log.metric(event)
        self.last_screen = (self.step, loss)
        return sums, skipped

    def screen_skip_steps(self, loss: float) -> int:
        """Steps whose checks this screen lets pass unscreened (kit/loop/checks.py)."""
        return checks.screen_skip_steps(self.step, loss, self.last_screen, self.target, self.cfg.val_screen_margin, self.cfg.val_screen_skip)

    def validate(self, screen_sums: torch.Tensor = None) -> float:
        """A full validation (and the further sets where due); after a screen, its sequences are not scored again."""
        t0 = time.perf_counter()
        event = {"type": "val", "step": self.step, "tokens": self.tokens_seen, "train_time_ms": self.train_time_ms}
        if screen_sums is None:
            event["val_loss"] = self.evaluate(self.files.val, strict=True)
        else:
            total = screen_sums + self.loss_sums(self.files.val, strict=True, first_seq=int(screen_sums[1].item()) // self.cfg.seq_len)
            event["val_loss"] = (total[0] / total[1]).item()
            event["screen_loss"] = (screen_sums[0] / screen_sums[1]).item()  # how far the screen that let it through was from the full loss
        if self.cfg.extra_val and self.extra_val_due(event["val_loss"]):
            for name, path in self.files.extra_val.items():
                event[f"val_loss_{name}"] = self.evaluate(path, strict=False)
        event["eval_s"] = time.perf_counter() - t0
        self.eval_time_s += event["eval_s"]
        self.log.metric(event)
        extras = "".join(f" | {k[9:]} {v:.4f}" for k, v in event.items() if k.startswith("val_loss_"))
        extras += f" | screen {event['screen_loss']:.4f}" if "screen_loss" in event else ""
        self.log.print(f"val step {self.step}/{self.cfg.max_steps} | val_loss {event['val_loss']:.4f}{extras} | train_time {self.train_time_ms / 1000:.1f}s | eval {event['eval_s']:.1f}s")
        self.last_val = event
        return event["val_loss"]

    def extra_val_due(self, val_loss: float) -> bool:
        """The further validation sets run at the regular validations, at the end and where the target
        is reached; the frequent late checks of a recipe's validate_at look at the main set only."""
        reached = self.target is not None and val_loss <= self.target
        return self.regular_validation() or reached

    def validation_due(self) -> bool:
        if self.step == self.cfg.max_steps:
            return True
        due = self.validate_at(self.step)
        return due and (self.regular_validation() or self.step >= self.next_screen_step)

    # ----- the run -----

    def run(self) -> None:
        self.setup()
        self.stop_signals = StopSignals(f"; continue from the newest checkpoint (if any) with: python {Path(self.recipe.script).name} --resume {self.log.dir}")
        try:
            with self.stop_signals:
                self.status = self.loop()
            self.audit_inductor_kernels()  # what compiled after the warm-up
        except Interrupted:
            self.status = "interrupted"
            raise
        except torch.OutOfMemoryError:
            self.status = "out_of_memory"
            smaller = divisors_descending(self.seqs_per_rank, self.micro_batch - 1) or [None]
            hint = f"try --micro-batch {smaller[0]}" if smaller[0] else "try a shorter --seq-len or a smaller model"
            raise OutOfMemory(f"CUDA out of memory at micro-batch {self.micro_batch} (seq-len {self.cfg.seq_len}); {hint}") from None
        finally:
            self.finish()

    def loop(self) -> str:
        cfg = self.cfg
        self.startup_done("log, checkpoint, compile set-up")
        self.startup_s = self.startup_mark - self.started  # process start to the warm-up: the imports and the parts above
        with compile_cache_bypass_reasons() as self.warmup_bypass_reasons:
            self.warmup_s = self.warm_up()
        split = ", ".join(f"{name} {seconds:.1f}s{cache_note(self.warmup_cache.get(name))}" for name, seconds in self.warmup_parts.items())
        startup = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in {"Python and imports": self.imports_s, **self.startup_parts}.items())
        self.log.print(f"warm-up (compile, kernel set-up): {self.warmup_s:.1f}s ({split}; start-up before it {self.startup_s:.1f}s: {startup})")
        if self.warmup_phases:  # what compiling took in each part, by torch's own timers, and what running the passes took
            self.log.print("warm-up by phase: " + "; ".join(f"{name}: {phase_note(phases)}" for name, phases in self.warmup_phases.items()))
        for reason in self.warmup_bypass_reasons:
            self.log.print(f"compile cache bypassed: {reason}")
        if self.params_without_grad:
            names = self.params_without_grad
            more = f" and {len(names) - 8} more" if len(names) > 8 else ""
            self.log.print(f"parameters that no warm-up step gave a gradient (they will not train): {', '.join(names[:8])}{more}")
        self.audit_inductor_kernels()  # what the warm-up compiled; untimed
        self.retries_before_loop = self.alloc_retries()  # a capped card's allocator may retry while compiling; what counts is the loop's
        self.clock.start()
        while True:
            if self.recipe.before_step is not None:  # part of the training time: it runs inside the clock's stretch
                self.recipe.before_step(self.step, self.model, self.optimizers, cfg)
            if self.validation_due():
                self.settle()
                screen_sums, skipped = self.screen()
                if not skipped:
                    val_loss = self.validate(screen_sums)
                    if self.target is not None and val_loss <= self.target:
                        self.reached_at = dict(self.last_val)
                        return "reached_target"
                self.clock.start()
            if cfg.stop_at_step and self.step == cfg.stop_at_step:
                self.settle()
                return "stopped"
            if self.step == cfg.max_steps:
                return "completed"
            self.queue_step()
            save_due = cfg.save_every and self.step % cfg.save_every == 0
            stop_seen = not self.ddp.enabled and self.stop_signals.requested  # under DDP every rank must stop at the same sync
            if save_due or stop_seen or self.step % cfg.sync_every == 0:
                self.settle()
                self.after_sync(bool(save_due))
                self.clock.start()

    def audit_inductor_kernels(self) -> None:
        """Under --emulate-gpu: Inductor's kernels loaded since the last audit, compiled again for the card; stops in
        one line on one that fits in none of its configs (kit/core/gpus.py InductorAudit)."""
        if not gpus.emulated():
            return
        if self.inductor_audit is None:
            self.inductor_audit = gpus.InductorAudit(gpus.emulated())
        t0 = time.perf_counter()
        self.inductor_audit.check()
        self.log.print(f"{self.inductor_audit.line()} ({time.perf_counter() - t0:.1f}s)")

    def after_sync(self, save_due: bool) -> None:
        """At a sync: the step's checkpoint, then a stop where a signal asked for one."""
        saved = self.save_checkpoint() if save_due and self.ddp.is_main else None
        if self.stop_signals.agreed(self.ddp.enabled, self.device):
            self.log.print(f"{self.stop_signals.requested or 'a signal on another rank'}: saving a checkpoint and stopping")
            if self.ddp.is_main:
                saved = saved or self.save_checkpoint()
            raise Interrupted(f"interrupted at step {self.step} of {self.cfg.max_steps}, checkpoint {saved}; "
                              f"continue with: python {Path(self.recipe.script).name} --resume {self.log.dir}")

    def save_checkpoint(self) -> Path:
        path = checkpoint.save(self.log.dir, self.step, self.tokens_seen, self.model, self.optimizers, self.stream, self.train_time_ms,
                               config_dict(self.cfg), self.cfg.keep_checkpoints, self.times_so_far())
        self.log.print(f"checkpoint: {path}")
        return path

    def queue_step(self) -> None:
        """One optimizer step, launched; its numbers are read at the next settle."""
        accum_steps, step_tokens = self.accum_steps_at(self.step), self.step_tokens_at(self.step)
        now = getattr(self.model, "flops_now", None)  # before the step: the model's state during it
        per_token, fp8 = now(self.cfg.seq_len) if now else (self.flops_per_token, 0)
        loss, grad_norm, lr = self.train_step(accum_steps)
        self.clock.mark()
        self.step += 1
        self.tokens_seen += step_tokens
        self.queued.append(QueuedStep(self.step, self.tokens_seen, step_tokens, loss, grad_norm, lr, step_tokens * per_token, step_tokens * fp8))

    def settle(self) -> None:
        """Wait for the GPU, add the stretch since the clock started to the training time, and log its steps
        in order; a step whose loss or gradient norm is not finite stops the run there."""
        wall_ms, shares = self.clock.stop()
        queued, self.queued = self.queued, []
        if not queued:  # a stretch without steps (a recipe's hook before a validation)
            self.add_train_time(wall_ms)
            return
        values = torch.stack([t.float() for q in queued for t in (q.loss, q.grad_norm)]).tolist()  # one copy for the stretch
        for queued_step, dt_ms, loss, grad_norm in zip(queued, shares, values[0::2], values[1::2]):
            if not (math.isfinite(loss) and math.isfinite(grad_norm)):
                self.diverged(queued_step, loss, grad_norm)
            self.book_step(queued_step, dt_ms, loss, grad_norm)

    def diverged(self, queued_step: QueuedStep, loss: float, grad_norm: float) -> None:
        self.step, self.tokens_seen = queued_step.step - 1, queued_step.tokens - queued_step.step_tokens  # the last good step
        last_good = checkpoint.latest(self.log.dir)
        self.status = "diverged"
        keep = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was saved (use --save-every N)"
        raise TrainingDiverged(f"loss became {loss} at step {queued_step.step} (grad norm {grad_norm}); stopped, {keep}; try a lower --lr")

    def add_train_time(self, dt_ms: float) -> None:
        self.train_time_ms += dt_ms
        self.time_this_run_ms += dt_ms

    def book_step(self, queued_step: QueuedStep, dt_ms: float, loss: float, grad_norm: float) -> None:
        self.add_train_time(dt_ms)
        self.tokens_this_run += queued_step.step_tokens
        self.step_ms.append(dt_ms)
        tokens_per_s = queued_step.step_tokens / (dt_ms / 1000)
        self.step_tokens_per_s.append(tokens_per_s)
        self.flops_this_run += queued_step.flops
        self.fp8_flops_this_run += queued_step.fp8_flops
        self.step_mfu.append(self.utilisation(queued_step.flops, queued_step.fp8_flops, dt_ms / 1000))
        self.log.step(queued_step.step, {
            "type": "train", "step": queued_step.step, "tokens": queued_step.tokens, "train_time_ms": self.train_time_ms,
            "loss": loss, "lr": queued_step.lr, "grad_norm": grad_norm, "step_ms": dt_ms, "tokens_per_s": tokens_per_s,
        })

    def utilisation(self, total: float, fp8: float, seconds: float):
        return flops.utilisation(total, fp8, seconds, self.peak_flops, self.fp8_peak_flops, self.ddp.world_size)

    def flops_summary(self, steady) -> dict:
        """MFU over the run and at its median step, its bf16 and FP8 parts, and the FLOPs counted."""
        seconds, total, fp8 = self.time_this_run_ms / 1000, self.flops_this_run, self.fp8_flops_this_run
        if not seconds:
            return {"mfu": None, "steady_mfu": None, "flops_per_token": self.flops_per_token}
        devices = self.ddp.world_size
        steady_values = [m for m in self.step_mfu[steady] if m is not None]
        return {
            "mfu": self.utilisation(total, fp8, seconds),
            "steady_mfu": statistics.median(steady_values) if steady_values else None,
            "mfu_bf16_part": flops.share_of_peak(total - fp8, seconds, self.peak_flops, devices),
            "mfu_fp8_part": flops.share_of_peak(fp8, seconds, self.fp8_peak_flops, devices) if fp8 else None,
            "fp8_flops_share": fp8 / total if total else None,
            "flops_per_token": total / self.tokens_this_run if self.tokens_this_run else self.flops_per_token,
            "flops_per_token_final": self.flops_per_token,
        }

    def finish(self) -> None:
        """summary.json (also after a failure), the final weights, and the closing line."""
        cfg, status = self.cfg, self.status
        tokens_per_s = self.tokens_this_run / (self.time_this_run_ms / 1000) if self.time_this_run_ms else None
        steady = slice(min(5, len(self.step_ms) - 1), None)  # the first five steps are warm-up
        median_ms = statistics.median(self.step_ms[steady]) if self.step_ms else None
        steady_tokens_per_s = statistics.median(self.step_tokens_per_s[steady]) if self.step_ms else None
        reached = self.reached_at is not None
        summary = {
            "script": Path(self.recipe.script).name,
            "flags": self.argv[1:],
            "git_commit": git_commit(),
            "device_name": hw.device_name(self.device),
            "emulated_gpu": gpus.emulated().key if gpus.emulated() else None,  # its speed is the host GPU's, not the card's
            "world_size": self.ddp.world_size,
            "status": status,
            "data": self.files.name,
            "target_loss": self.target,
            "reached_target": reached,
            "time_to_target_s": self.reached_at["train_time_ms"] / 1000 if reached else None,
            "tokens_to_target": self.reached_at["tokens"] if reached else None,
            "train_time_s": self.train_time_ms / 1000,
            **{name: value for name, value in self.times_so_far().items() if name != "resumed_at"},  # over every part of the run
            "resumed_at_steps": self.earlier["resumed_at"],
            "startup_s": self.startup_s, "imports_s": self.imports_s,  # this part of the run: its start-up (imports included),
            "startup_parts_s": self.startup_parts,  # the start-up after the imports, by part,
            "setup_s": self.setup_seconds(),  # of which the variant's own one-time work
            "params_without_grad": self.params_without_grad,  # in every state of the warm-up: they never train
            "warmup_parts_s": self.warmup_parts,  # where its warm-up went,
            "warmup_compile_cache": self.warmup_cache,  # and what each part found in the compile caches,
            "warmup_cache_bypass_reasons": self.warmup_bypass_reasons,  # or why it could not use them
            "warmup_compile_phases_s": self.warmup_phases,  # and, by torch's compile timers, what compiling and running took
            "final_val_loss": self.last_val["val_loss"] if self.last_val else None,
            **{f"final_{k}": v for k, v in (self.last_val or {}).items() if k.startswith("val_loss_")},
            "final_val": self.last_val,
            "steps": self.step,
            "tokens": self.tokens_seen,
            "tokens_per_s": tokens_per_s,
            "median_step_ms": median_ms,
            "steady_tokens_per_s": steady_tokens_per_s,
            **self.flops_summary(steady),
            "peak_mem_gib": torch.cuda.max_memory_allocated(self.device) / 2**30 if self.device.type == "cuda" else None,
            "alloc_retries": self.alloc_retries(),  # the CUDA allocator's, over the process,
            "alloc_retries_in_loop": self.retries_in_loop(),  # and in the training loop (steps and validations)
            "n_params": self.n_params,
            "micro_batch": self.micro_batch,
            "accum_steps": self.accum_steps,
            "compile": cfg.compile,
            "attn": cfg.attn,
            "dtype": str(self.dtype).replace("torch.", ""),
        }
        if self.inductor_audit is not None:
            summary["inductor_kernel_audit"] = self.inductor_audit.summary()
        report = self.run_report()
        if report:
            summary["run_report"] = report
            self.log.print(f"end of run: {json.dumps(report)}")
        self.log.summary(summary)
        if status in ("reached_target", "completed") and cfg.export and self.ddp.is_main:
            path = checkpoint.export_safetensors(self.model, Path(self.log.dir) / "model.safetensors")
            self.log.print(f"weights: {path}")
        if status == "reached_target":
            self.log.print(f"reached val loss {summary['final_val_loss']:.4f} <= {self.target} at step {self.step}: "
                           f"train time {summary['time_to_target_s']:.1f}s, wall time {summary['wall_time_s']:.1f}s")
        elif status == "completed":
            self.log.print(f"finished {self.step} steps: final val loss {summary['final_val_loss']:.4f} (target {self.target}), "
                           f"train time {summary['train_time_s']:.1f}s, wall time {summary['wall_time_s']:.1f}s")
        elif status == "stopped":
            self.log.print(f"stopped at step {self.step} of {cfg.max_steps} (--stop-at-step): train time {summary['train_time_s']:.1f}s, "
                           f"{summary['steady_tokens_per_s'] or 0:,.0f} tokens/s steady, wall time {summary['wall_time_s']:.1f}s")
        if summary["alloc_retries_in_loop"]:  # each one frees the allocator's cache and synchronises: steps slow down
            self.log.print(f"warning: the CUDA allocator ran out and retried {summary['alloc_retries_in_loop']} times in the training loop "
                           "(a memory-bound run); a smaller --micro-batch or --memory-cap-gib may be faster")
        elif summary["alloc_retries"]:
            self.log.print(f"the CUDA allocator retried {summary['alloc_retries']} times before training (compiling, the warm-up) "
                           "and never in the training loop: the steps did not wait for it")
        self.log.print(f"run directory: {self.log.dir}")
        self.log.close()
