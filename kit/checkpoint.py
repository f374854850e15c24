"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model and optimizer states, the step (hence the LR schedule position)
and the tokens trained on,
the data stream position, every RNG state and the training time so far. It is written to a
temporary file and renamed, so a crash mid-write never replaces a good checkpoint.
"""

import os
import random
from pathlib import Path

import numpy as np
import torch

from kit.errors import UserError

CHECKPOINT_DIR = "checkpoints"


def rng_state() -> dict:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save(run_dir, step: int, tokens: int, model, optimizers, stream, train_time_ms: float, config: dict, keep: int = 2) -> Path:
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_step{step:06d}.pt"
    payload = {
        "step": step,
        "tokens": tokens,
        "model": model.state_dict(),
        "optimizers": [opt.state_dict() for opt in optimizers],
        "data": stream.state_dict(),
        "rng": rng_state(),
        "train_time_ms": train_time_ms,
        "config": config,
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    for old in sorted(folder.glob("ckpt_step*.pt"))[:-keep] if keep > 0 else []:
        old.unlink()
    return path


def latest(run_dir):
    found = sorted((Path(run_dir) / CHECKPOINT_DIR).glob("ckpt_step*.pt"))
    return found[-1] if found else None


def find(path_or_dir) -> Path:
    """A checkpoint file itself, or the newest checkpoint of a run directory."""
    path = Path(path_or_dir)
    if path.is_dir():
        newest = latest(path)
        if newest is None:
            raise UserError(f"--resume {path}: the run directory has no checkpoints (they are written with --save-every N)")
        return newest
    if not path.exists():
        raise UserError(f"--resume {path}: no such checkpoint")
    return path


def load(path: Path, model, optimizers, stream) -> dict:
    """Restore states in place; return the payload (step, train_time_ms, ...)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a torn or foreign file
        raise UserError(f"--resume {path}: cannot read the checkpoint ({type(err).__name__}: {err})") from None
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"--resume {path}: the checkpoint is for a different model ({first}); use the flags it was made with") from None
    if len(payload["optimizers"]) != len(optimizers):
        raise UserError(f"--resume {path}: the checkpoint has {len(payload['optimizers'])} optimizer(s), this script builds {len(optimizers)}")
    for opt, state in zip(optimizers, payload["optimizers"]):
        opt.load_state_dict(state)
    stream.load_state_dict(payload["data"])
    set_rng_state(payload["rng"])
    return payload


def export_safetensors(model, path) -> Path:
    """The final weights as safetensors (tied tensors stored once)."""
    from safetensors.torch import save_model

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_model(model, str(tmp))
    os.replace(tmp, path)
    return path
