"""Run configuration: a dataclass whose fields become command-line flags.

`TrainConfig` holds what every train script accepts (the kit's command-line contract). A script subclasses
it as `Hyperparameters`, changing defaults or adding fields; `parse_config` turns any such class
into flags (field foo_bar -> --foo-bar), rejects unknown or contradictory flags with one line,
and fills the defaults that depend on other flags (small-model presets, per-dataset targets).
"""

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import ClassVar

from kit.core.errors import UserError


@dataclass
class TrainConfig:
    # a script's defaults per --data ({dataset: {field: value}}), for the flags not given
    DATA_PRESETS: ClassVar[dict] = {}

    def configure(self, fixed: set) -> None:
        """A script's defaults that depend on other flags, for the fields not in `fixed` (given, or set by
        the model size); called once at parse time, after the presets. The baseline has none."""

    # data
    data: str = field(default="fineweb", metadata={"choices": ["fineweb", "webmix", "synthetic"], "help": "dataset (or give --train-files/--val-files)"})
    train_files: str = field(default="", metadata={"help": "glob of training shards (replaces --data)"})
    val_files: str = field(default="", metadata={"help": "glob of validation shards; the first is used"})
    align_bos: bool = field(default=False, metadata={"help": "start every training sequence at a document start (token 50256)"})
    data_order_seed: int = field(default=0, metadata={"help": "0: the training shards in order from their starts; N > 0: the shards in an order drawn with N, "
                                                           "each read from an offset drawn with N (a repeat with another data order)"})
    # length and batch
    max_steps: int = field(default=4768, metadata={"help": "optimizer steps; the LR schedule scales with it"})
    stop_at_step: int = field(default=0, metadata={"help": "end the run after this step, on the schedule of --max-steps (a speed or memory "
                                                       "check at a point of a long schedule); 0: at --max-steps"})
    batch_tokens: int = field(default=524_288, metadata={"help": "tokens per optimizer step (all ranks, all micro-steps)"})
    seq_len: int = 1024
    micro_batch: int = field(default=0, metadata={"help": "sequences per forward pass and rank; 0 picks the largest that fits"})
    # validation
    target_loss: typing.Optional[float] = field(default=None, metadata={"help": "stop at the first validation loss <= this; default per dataset (fineweb 3.3821, webmix 3.64)"})
    val_every: int = field(default=250, metadata={"help": "validate every N steps (and at the first and last step); 0: only at the end"})
    val_tokens: int = 10_485_760
    extra_val: bool = field(default=True, metadata={"help": "also report the dataset's further validation sets (webmix: fineweb_sample_val.bin)"})
    val_screen_tokens: int = field(default=0, metadata={"help": "checks between the regular validations (a recipe's frequent late ones) first score this many "
                                                             "validation tokens and validate in full only within --val-screen-margin of the target "
                                                             "(fewer full validations; the crossing is never found earlier than without); 0: off"})
    val_screen_margin: float = 0.03
    val_screen_skip: float = field(default=0.0, metadata={"help": "after a screen above the margin, the checks of this share of the steps the loss needs to reach it "
                                                                 "(at its fall per step since the last screen) are skipped; 0: every check screened"})
    # model
    model_size: str = field(default="124m", metadata={"choices": ["tiny", "124m", "350m", "774m", "1558m"]})
    attn: str = field(default="manual", metadata={"choices": ["manual", "sdpa", "flex"], "help": "manual: explicit softmax(QK^T)V; sdpa: torch's fused kernels; flex: FlexAttention"})
    # optimizer and schedule
    lr: float = 6e-4
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = field(default=1.0, metadata={"help": "max global gradient norm; 0 disables"})
    warmup_steps: int = field(default=700, metadata={"help": "warmup length for a run of --reference-steps steps (scaled with --max-steps)"})
    reference_steps: int = field(default=4768, metadata={"help": "the run length the schedule lengths are given for"})
    min_lr_frac: float = field(default=0.1, metadata={"help": "the cosine ends at lr * this"})
    fused_adamw: bool = False
    # system
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})
    dtype: str = field(default="auto", metadata={"choices": ["auto", "bf16", "fp32"], "help": "auto: bf16 autocast on CUDA, fp32 on CPU"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the model"})
    memory_cap_gib: float = field(default=0.0, metadata={"help": "cap this process's GPU memory (e.g. 24 to check a 24 GB card's fit); 0: no cap"})
    emulate_gpu: str = field(default="", metadata={"choices": ["", "rtx3090", "rtx4090"], "help": "on a larger NVIDIA GPU, run as this card: its compute "
                                                                                              "capability decides the kernel paths (FP8, attention tiles), memory capped at 22.5 GiB; the speed stays the host's"})
    seed: int = 1337
    out_dir: str = field(default="", metadata={"help": "run directory; default logs/<script>_<time>"})
    resume: str = field(default="", metadata={"help": "continue a run: a run directory (its newest checkpoint) or a checkpoint file; the run's own "
                                                      "settings come back from its checkpoint, and only the flags listed under 'on --resume' may change"})
    save_every: int = field(default=0, metadata={"help": "write a checkpoint every N steps; 0: never"})
    keep_checkpoints: int = field(default=2, metadata={"help": "how many of the newest checkpoints to keep"})
    export: bool = field(default=True, metadata={"help": "write the final weights as model.safetensors"})
    progress: str = field(default="auto", metadata={"choices": ["auto", "bar", "lines"], "help": "auto: a bar on a terminal, one line per step otherwise"})
    tensorboard: str = field(default="", metadata={"help": "also log every metric to TensorBoard event files in this folder (needs pip install tensorboard), "
                                                           "to watch a long run from another machine: tensorboard --logdir DIR"})
    sync_every: int = field(default=10, metadata={"help": "wait for the GPU and read the steps' losses back every N steps (the log, progress and "
                                                          "divergence check follow then); 1: after every step, which idles the GPU while the "
                                                          "next step is prepared"})


# Defaults for small models: a flag the user did not give takes these values.
SIZE_PRESETS = {
    "tiny": {"seq_len": 128, "batch_tokens": 1024, "val_tokens": 4096, "val_every": 10, "lr": 3e-3, "compile": False},
}
SYNTHETIC_PRESET = {"val_tokens": 16_384}


class OneLineParser(argparse.ArgumentParser):
    def error(self, message):
        raise UserError(f"{message} (see --help)")


def parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected 0 or 1, got {text!r}")


def parse_optional_float(text: str):
    return None if text.lower() in ("none", "") else float(text)


FLAG_TYPES = {bool: parse_bool, int: int, float: float, str: str, typing.Optional[float]: parse_optional_float}


def size_presets(cls) -> dict:
    """What each --model-size sets for the flags not given: the kit's SIZE_PRESETS, with a script's own
    (its config class's MODEL_SIZE_PRESETS, e.g. a shorter curriculum for the tiny model) on top."""
    merged = {size: dict(values) for size, values in SIZE_PRESETS.items()}
    for size, values in getattr(cls, "MODEL_SIZE_PRESETS", {}).items():
        merged.setdefault(size, {}).update(values)
    return merged


def field_metadata(cls, name: str) -> dict:
    """A field's metadata (help, choices), from the nearest class that gives any: a script that only changes
    a default (attn: str = "sdpa") keeps the kit's help and choices."""
    for klass in cls.__mro__:
        for f in dataclasses.fields(klass) if dataclasses.is_dataclass(klass) else ():
            if f.name == name and f.metadata:
                return dict(f.metadata)
    return {}


def build_parser(cls, description: str = "") -> argparse.ArgumentParser:
    parser = OneLineParser(description=description, argument_default=argparse.SUPPRESS, allow_abbrev=False,  # --max-step is a typo, not --max-steps
                           epilog=RESUME_EPILOG)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        kind = FLAG_TYPES.get(hint)
        if kind is None:
            raise TypeError(f"{cls.__name__}.{f.name}: no flag type for {hint}")
        metadata = field_metadata(cls, f.name)
        help_text = metadata.get("help", "")
        if f.name in getattr(cls, "NOT_READ", ()):  # inherited by a script that never reads it: refused (check_not_read), not listed
            parser.add_argument("--" + f.name.replace("_", "-"), type=kind, help=argparse.SUPPRESS)
            continue
        if f.name == "model_size":
            help_text += "the model's size; " + "; ".join(f"{size} sets " + ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in values.items())
                                          for size, values in size_presets(cls).items()) + " (for the flags not given)"
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            type=kind,
            choices=metadata.get("choices"),
            # argparse %-formats help strings: a literal percent sign must be doubled
            help=f"{help_text} (default: {f.default})".strip().replace("%", "%%"),
        )
    return parser


# What a resumed run may change: how it reports, saves and validates, and its hardware set-up. The rest
# (data, model, optimizer, schedule) comes back from the checkpoint. --max-steps may change where the LR and
# batch size at the resumed step stay the same under the new length (kit.loop.train checks it).
CHANGEABLE_ON_RESUME = ("resume", "out_dir", "max_steps", "stop_at_step", "save_every", "keep_checkpoints", "progress", "tensorboard", "sync_every", "export", "val_every", "extra_val",
                        "compile", "micro_batch", "memory_cap_gib", "emulate_gpu")
RESUME_EPILOG = ("on --resume: the run's settings come from its checkpoint; of the flags, only these may change: "
                 + ", ".join("--" + name.replace("_", "-") for name in CHANGEABLE_ON_RESUME[1:])
                 + " (--max-steps only where the LR and batch size at the resumed step stay the same under the new length)")


def check_not_read(cls, given: dict) -> None:
    """A flag the script inherits from TrainConfig but never reads (its class lists it in NOT_READ: the record
    script has its own learning rates and schedule) is refused in one line instead of doing nothing."""
    ignored = [name for name in getattr(cls, "NOT_READ", ()) if name in given]
    if ignored:
        flag = "--" + ignored[0].replace("_", "-")
        raise UserError(f"{flag}: this script does not read it ({getattr(cls, 'NOT_READ_WHY', 'see --help for its own flags')})")


def resumed_config(cls, given: dict, saved: dict):
    """The resumed run's config: the saved one, with the flags given now that may change; one line for
    a flag that may not (a different value of --data, --lr, ...)."""
    known = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in saved.items() if k in known}
    refused = [name for name, value in given.items() if name not in CHANGEABLE_ON_RESUME and name in values and value != values[name]]
    if refused:
        name = refused[0]
        raise UserError(f"--{name.replace('_', '-')} {given[name]}: the resumed run has {values[name]!r}; a resumed run keeps its settings "
                        f"(it may change {', '.join('--' + n.replace('_', '-') for n in CHANGEABLE_ON_RESUME[1:])}); start a new run to change it")
    values.update({name: value for name, value in given.items() if name in CHANGEABLE_ON_RESUME})
    return cls(**values)


def parse_config(cls, argv=None, world_size: int = 1, description: str = ""):
    """Parse argv into cls; return (config, set of fields the user gave explicitly).

    Defaults that depend on other flags, for the fields the user did not give: the script's
    per-dataset presets (cls.DATA_PRESETS), then the synthetic-data preset, then the model-size preset
    (the later wins), then the script's own cfg.configure(fixed) for the fields not in `fixed`: neither
    given nor set by the model size; then the checks. With --resume, the run's saved settings instead
    of all of that (resumed_config).
    """
    given = vars(build_parser(cls, description).parse_args(argv))
    check_not_read(cls, given)
    if given.get("resume"):
        from kit.core.checkpoint import saved_config

        cfg = resumed_config(cls, given, saved_config(given["resume"]))
        explicit = set(given)
        check_config(cfg, explicit, world_size)
        return cfg, explicit
    cfg = cls(**given)
    explicit = set(given)
    presets = dict(cls.DATA_PRESETS.get(cfg.data, {})) if not cfg.train_files else {}
    if cfg.data == "synthetic" and not cfg.train_files:
        presets.update(SYNTHETIC_PRESET)
    sized = size_presets(cls).get(cfg.model_size, {})
    presets.update(sized)
    for name, value in presets.items():
        if name not in explicit:
            setattr(cfg, name, value)
    cfg.configure(explicit | set(sized))  # a script's own defaults leave the given flags and the model size's values (the tiny batch) alone
    check_config(cfg, explicit, world_size)
    return cfg, explicit


def check_config(cfg, explicit: set, world_size: int) -> None:
    """Reject contradictory or impossible settings with one line each."""
    if cfg.train_files and "data" in explicit:
        raise UserError("--train-files replaces --data: give one of them")
    if bool(cfg.train_files) != bool(cfg.val_files):
        raise UserError("--train-files and --val-files go together")
    for name in ("max_steps", "batch_tokens", "seq_len", "val_tokens", "reference_steps", "sync_every"):
        if getattr(cfg, name) <= 0:
            raise UserError(f"--{name.replace('_', '-')} must be positive")
    if not 0 <= cfg.stop_at_step <= cfg.max_steps:
        raise UserError(f"--stop-at-step {cfg.stop_at_step}: a step of the schedule, 1 to --max-steps {cfg.max_steps} (0: none)")
    for name in ("micro_batch", "val_every", "save_every", "warmup_steps"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must not be negative")
    for f in dataclasses.fields(cfg):  # learning rates and weight decays (a script's own too)
        value = getattr(cfg, f.name)
        if (f.name in ("lr", "weight_decay") or f.name.endswith(("_lr", "_weight_decay"))) and isinstance(value, (int, float)) and value < 0:
            raise UserError(f"--{f.name.replace('_', '-')} {value}: must not be negative")
        if f.name.startswith("beta") or f.name.endswith(("_beta1", "_beta2")):
            if isinstance(value, float) and not 0 <= value < 1:
                raise UserError(f"--{f.name.replace('_', '-')} {value}: between 0 and 1 (1 excluded)")
    per_step = cfg.seq_len * world_size
    if cfg.batch_tokens % per_step:
        raise UserError(f"--batch-tokens {cfg.batch_tokens} is not a multiple of --seq-len {cfg.seq_len} x {world_size} rank(s)")
    seqs_per_rank = cfg.batch_tokens // per_step
    if cfg.micro_batch and seqs_per_rank % cfg.micro_batch:
        raise UserError(f"--micro-batch {cfg.micro_batch} does not divide the {seqs_per_rank} sequences per rank and step")
    if cfg.val_tokens < cfg.seq_len:
        raise UserError(f"--val-tokens {cfg.val_tokens} is shorter than one sequence (--seq-len {cfg.seq_len})")
    if not 0 <= cfg.val_screen_skip < 1:
        raise UserError(f"--val-screen-skip {cfg.val_screen_skip}: a share of the steps to the margin, from 0 up to (not including) 1")
    if cfg.val_screen_tokens and not cfg.seq_len <= cfg.val_screen_tokens < cfg.val_tokens:
        raise UserError(f"--val-screen-tokens {cfg.val_screen_tokens}: at least one sequence ({cfg.seq_len}) and fewer than --val-tokens {cfg.val_tokens}")


def config_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def layer_count(flag: str, value: int, n_layer: int) -> int:
    """A flag that counts layers (hybrid models): between 0 and the model's layers, or a one-line error."""
    if not 0 <= value <= n_layer:
        raise UserError(f"{flag} {value}: between 0 and the model's {n_layer} layers")
    return value
