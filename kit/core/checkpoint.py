"""Checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model and optimizer states, the step (hence the LR schedule position)
and the tokens trained on,
the data stream position, every RNG state and the training time so far. It is written to a
temporary file and renamed, so a crash mid-write never replaces a good checkpoint.
"""

import json
import os
import random
from pathlib import Path

import numpy as np
import torch

from kit.core.errors import UserError

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


def save(run_dir, step: int, tokens: int, model, optimizers, stream, train_time_ms: float, config: dict, keep: int = 2, times: dict = None) -> Path:
    """Write the checkpoint of this step; keep the `keep` newest of the run's checkpoints up to this step
    (a newer one is never deleted). times: the run's other clocks so far (wall, evaluation, warm-up)."""
    folder = Path(run_dir) / CHECKPOINT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"ckpt_step{step:06d}.pt"
    payload = {
        "step": step,
        "tokens": tokens,
        "model": model.state_dict(),
        "pending_grads": {name: p.grad for name, p in model.named_parameters() if p.grad is not None},  # an optimizer not yet due
        "optimizers": [opt.state_dict() for opt in optimizers],
        "data": stream.state_dict(),
        "rng": rng_state(),
        "train_time_ms": train_time_ms,
        "config": config,
        "times": times or {},
    }
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)
    own = sorted(p for p in folder.glob("ckpt_step*.pt") if (step_of(p) or 0) <= step)
    for old in own[:-keep] if keep > 0 else []:
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


def run_dir_of(checkpoint_path: Path) -> Path:
    """The run directory a checkpoint was written into (RUN/checkpoints/ckpt_stepN.pt)."""
    return Path(checkpoint_path).parent.parent


def step_of(checkpoint_path: Path):
    """The step in a checkpoint's name (ckpt_step000010.pt -> 10), or None for another name."""
    name = Path(checkpoint_path).stem
    return int(name[len("ckpt_step"):]) if name.startswith("ckpt_step") and name[len("ckpt_step"):].isdigit() else None


def saved_config(path_or_dir) -> dict:
    """The settings of the run a checkpoint belongs to: its run directory's config.json, else the
    copy inside the checkpoint (a file moved away from its run)."""
    path = find(path_or_dir)
    config_file = run_dir_of(path) / "config.json"
    if config_file.exists():
        try:
            return json.loads(config_file.read_text())
        except json.JSONDecodeError:
            pass
    return read(path)["config"]


def read(path: Path) -> dict:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # a torn or foreign file
        raise UserError(f"--resume {path}: cannot read the checkpoint ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None


def load(path: Path, model, optimizers, stream) -> dict:
    """Restore states in place; return the payload (step, train_time_ms, ...)."""
    payload = read(path)
    try:
        model.load_state_dict(payload["model"])
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise UserError(f"--resume {path}: the checkpoint is for a different model ({first}); use the flags it was made with") from None
    if len(payload["optimizers"]) != len(optimizers):
        raise UserError(f"--resume {path}: the checkpoint has {len(payload['optimizers'])} optimizer(s), this script builds {len(optimizers)}")
    for opt, state in zip(optimizers, payload["optimizers"]):
        opt.load_state_dict(state)
    pending = payload.get("pending_grads", {})
    for name, p in model.named_parameters():
        p.grad = pending[name].to(p.device) if name in pending else None
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
