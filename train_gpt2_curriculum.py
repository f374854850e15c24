"""The baseline with a sequence-length curriculum and a one-cycle learning rate.

Curriculum: training starts on sequences of --curriculum-start tokens and doubles their length
in equal stages until it reaches --seq-len at --curriculum-until of the run. The loader still
reads --seq-len tokens per sequence; a shorter stage splits each into pieces (1024 -> 4 x 256),
so every step trains on the same tokens as the baseline, only with less context early on,
where attention is cheaper. With --compile 1 each stage's length is its own compiled graph, all
compiled in the untimed warm-up, so no stage compiles inside a timed step.
One-cycle: the LR rises from --lr / 25 to --lr (the peak, 3x the baseline's 6e-4 by default) over
--cycle-up of the run, then falls along a cosine to --lr / 250,000 (Smith's one-cycle with
PyTorch's OneCycleLR defaults). --one-cycle 0 keeps the baseline's warmup + cosine.

    python train_gpt2_curriculum.py --data webmix --attn sdpa --compile 1
"""

import functools
import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch

from kit.core.errors import UserError
from kit.modeling.model import GPT, gpt_config
from kit.modeling.optim import warmup_cosine
from kit.loop.train import Recipe, main

import train_gpt2 as baseline  # the baseline's hyperparameters and optimizer, shared


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    lr: float = 1.8e-3
    MODEL_SIZE_PRESETS: ClassVar[dict] = {"tiny": {"curriculum_start": 32}}  # the tiny model's 128-token sequences
    curriculum_start: int = field(default=256, metadata={"help": "sequence length of the first stage (--seq-len / a power of 2)"})
    curriculum_until: float = field(default=0.3, metadata={"help": "share of the run after which sequences have their full length"})
    one_cycle: bool = field(default=True, metadata={"help": "one-cycle LR with peak --lr (0: the baseline's warmup + cosine)"})
    cycle_up: float = field(default=0.25, metadata={"help": "share of the run the LR rises"})


def stage_length(step: int, cfg: Hyperparameters) -> int:
    """--curriculum-start doubled once per stage; the stages split [0, curriculum_until) equally."""
    doublings = round(math.log2(cfg.seq_len / cfg.curriculum_start))
    if doublings <= 0 or step >= cfg.curriculum_until * cfg.max_steps:
        return cfg.seq_len
    stage = int(step / (cfg.curriculum_until * cfg.max_steps) * (doublings + 1))
    return min(cfg.seq_len, cfg.curriculum_start * 2 ** stage)


def one_cycle(step: int, cfg: Hyperparameters) -> float:
    """Multiplier of the peak LR: 1/25 -> 1 (linear) over cycle_up, then cosine to 1/(25 * 1e4)."""
    if not cfg.one_cycle:
        return warmup_cosine(step, cfg)
    up = max(1, round(cfg.cycle_up * cfg.max_steps))
    start, end = 1 / 25, 1 / (25 * 1e4)
    if step < up:
        return start + (1 - start) * step / up
    progress = min(1.0, (step - up) / max(1, cfg.max_steps - up))
    return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * progress))


class CurriculumGPT(GPT):
    def __init__(self, config):
        super().__init__(config)
        self.train_len = config.block_size

    def forward(self, idx, targets=None):
        if self.training and targets is not None and self.train_len < idx.size(1):  # split sequences into stage-length pieces
            idx, targets = idx.reshape(-1, self.train_len), targets.reshape(-1, self.train_len)
        return super().forward(idx, targets)


def build_model(cfg: Hyperparameters):
    if cfg.seq_len % cfg.curriculum_start or cfg.seq_len & (cfg.seq_len - 1) or cfg.curriculum_start & (cfg.curriculum_start - 1):
        raise UserError(f"--curriculum-start {cfg.curriculum_start} and --seq-len {cfg.seq_len}: both powers of 2, the first dividing the second")
    return CurriculumGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len, attn=cfg.attn))


def before_step(step: int, model: CurriculumGPT, optimizers, cfg: Hyperparameters) -> None:
    model.train_len = stage_length(step, cfg)


def stage_lengths(model: CurriculumGPT, cfg: Hyperparameters) -> list:
    """Functions setting each stage's sequence length (--curriculum-start .. --seq-len), for the warm-up."""
    lengths = sorted({stage_length(step, cfg) for step in range(cfg.max_steps)} | {cfg.seq_len})
    return [lambda n=n: setattr(model, "train_len", n) for n in lengths]


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0],
                lr_schedule=one_cycle, before_step=before_step, warm_up_states=stage_lengths,
                compile_model=functools.partial(torch.compile, dynamic=False))  # one static graph per length, not a dynamic one from the third

if __name__ == "__main__":
    sys.exit(main(RECIPE))
