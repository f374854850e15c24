"""Validation loss of a finished run at other long attention windows.

The public record line validates with longer long windows than it trains with (13 or 20 blocks of 128 tokens after
11); this scores a run's saved model at each given window, on its validation shard and further sets (webmix: also
fineweb_sample), or on given files. A run trained with --yarn takes YaRN's rotary frequencies and attention scale
for each window (kit.modeling.modern.yarn_state). Attention runs dense (the reference path) on any device.

    python scripts/evaluate.py logs/my_run --window-blocks 14,16,20
    python scripts/evaluate.py logs/my_run --window-blocks 14 --tokens 2097152 --files data/webmix/webmix_val_000000.bin
"""

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.core.errors import UserError  # noqa: E402
from kit.data import datasets  # noqa: E402
from kit.data.loader import validation_batches  # noqa: E402
from kit.loop.train import validation_loss_sums  # noqa: E402
from kit.tools.runs import load_model  # noqa: E402


def int_list(text: str, flag: str) -> list:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} {text!r}: whole numbers separated by commas (e.g. 14,16,20)") from None
    if any(v < 1 for v in values):
        raise UserError(f"{flag} {text}: windows of at least 1 block")
    return values


def validation_sets(cfg, files: str) -> dict:
    """name -> path: the given files, or the run's validation shard and further sets."""
    if files:
        paths = [Path(f) for f in files.split(",")]
        missing = [str(p) for p in paths if not p.exists()]
        if missing:
            raise UserError(f"--files: {', '.join(missing)} not found")
        return {p.stem: p for p in paths}
    validation_only = copy.copy(cfg)
    validation_only.max_steps = 0  # FineWeb: fetch the validation shard alone where it is missing, no training shards
    data = datasets.resolve(validation_only)
    return {"val": data.val, **data.extra_val}


def evaluate(model, cfg, windows, sets: dict, tokens: int, micro_batch: int, device: torch.device) -> list:
    """One row per (window, set): the mean loss over the set's first `tokens` tokens (fewer where it holds fewer)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    rows = []
    for window in windows:
        if window is not None:
            model.set_window(window)
        for name, path in sets.items():
            t0 = time.perf_counter()
            batches = validation_batches(path, tokens, cfg.seq_len, micro_batch, strict=False)
            total = validation_loss_sums(model, batches, device, dtype)
            rows.append({"window_blocks": window, "set": name, "loss": (total[0] / total[1]).item(), "tokens": int(total[1].item()),
                         "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def main(argv=None) -> list:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--window-blocks", default="", help="long windows to score, in blocks of 128 tokens, e.g. 14,16,20 (default: the run's own)")
    parser.add_argument("--tokens", type=int, default=0, help="tokens per set (default: the run's --val-tokens)")
    parser.add_argument("--files", default="", help="comma-separated token shards to score instead of the run's validation sets")
    parser.add_argument("--micro-batch", type=int, default=1, help="sequences per forward pass")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="also write the rows to this JSON file")
    args = parser.parse_args(argv)
    try:
        model, cfg, _ = load_model(args.run_dir, args.device)
        if args.window_blocks and not hasattr(model, "set_window"):
            raise UserError(f"{args.run_dir}: its model has no attention window to set (a train_gpt2_speedrun.py run has)")
        windows = int_list(args.window_blocks, "--window-blocks") if args.window_blocks else [getattr(model, "window_blocks_on_host", None)]
        rows = evaluate(model, cfg, windows, validation_sets(cfg, args.files), args.tokens or cfg.val_tokens, args.micro_batch, torch.device(args.device))
    except UserError as e:
        parser.exit(2, f"{parser.prog}: error: {e}\n")
    print("| long window (blocks) | set | loss | tokens | seconds |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['window_blocks'] if r['window_blocks'] is not None else '-'} | {r['set']} | {r['loss']:.4f} | {r['tokens']:,} | {r['seconds']} |")
    if args.out:
        Path(args.out).write_text(json.dumps({"run": str(args.run_dir), "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
