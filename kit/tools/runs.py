"""Rebuild a trained model from its run directory: the script that trained it, its configuration,
and its weights (model.safetensors, or the newest checkpoint)."""

import dataclasses
import importlib.util
import json
from pathlib import Path

import torch

from kit.core import checkpoint
from kit.core.errors import UserError

REPO = Path(__file__).resolve().parents[2]


def load_script(name: str):
    path = REPO / name
    if not path.exists():
        raise UserError(f"the run was made by {name}, which is not in {REPO}")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def inference_config(module, saved: dict, device: str):
    """The run's configuration, with the choices that only matter for training or for one GPU
    kind set for inference: full-precision head, attention that takes any length."""
    cls = module.RECIPE.config_cls
    names = {f.name for f in dataclasses.fields(cls)}
    cfg = cls(**{k: v for k, v in saved.items() if k in names})
    cfg.device = device
    choices = {f.name: f.metadata.get("choices", ()) for f in dataclasses.fields(cls)}
    if "dense" in choices.get("attn", ()):
        cfg.attn = "dense"  # flex needs lengths in blocks of 128
    if hasattr(cfg, "fp8_head"):
        cfg.fp8_head = "0"
    if hasattr(cfg, "fp8_mlp"):
        cfg.fp8_mlp = "off"
    return cfg


def load_model(run_dir, device: str = "cpu"):
    """(model in eval mode on device, its configuration, the script module)."""
    run_dir = Path(run_dir)
    summary_path, config_path = run_dir / "summary.json", run_dir / "config.json"
    if not config_path.exists():
        raise UserError(f"{run_dir} is not a run directory (no config.json)")
    saved = json.loads(config_path.read_text())
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    script = summary.get("script", "train_gpt2.py")
    module = load_script(script)
    cfg = inference_config(module, saved, device)
    model = module.RECIPE.build_model(cfg)
    weights = run_dir / "model.safetensors"
    if weights.exists():
        from safetensors.torch import load_model as load_safetensors

        load_safetensors(model, str(weights), strict=True)
    else:
        latest = checkpoint.latest(run_dir)
        if latest is None:
            raise UserError(f"{run_dir} holds neither model.safetensors nor a checkpoint")
        model.load_state_dict(torch.load(latest, map_location="cpu", weights_only=False)["model"])
    if hasattr(model, "set_window") and hasattr(module, "evaluation_window_blocks"):  # the attention window the run's last validation had
        model.set_window(module.evaluation_window_blocks(summary.get("steps", cfg.max_steps), cfg))
    return model.to(device).eval(), cfg, module
