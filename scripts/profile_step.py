"""Where a training step's GPU time goes: profile a few steady steps of a recipe, print the top ops.

    python scripts/profile_step.py train_gpt2_speedrun.py --data webmix [flags...]

Builds the recipe's trainer exactly as a run would (same micro-batch, compile, optimizers),
warms it up, runs two unprofiled steps, then profiles two steps with the longest attention
window the recipe reaches, and prints the ops by total CUDA time.
"""

import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.tools.runs import load_script  # noqa: E402
from kit.loop.train import Trainer  # noqa: E402


def main(argv) -> None:
    if not argv or not argv[0].endswith(".py"):
        raise SystemExit(__doc__)
    script, flags = argv[0], argv[1:]
    trainer = Trainer(load_script(script).RECIPE, [*flags, "--export", "0", "--val-every", "0"])
    trainer.setup()
    if hasattr(trainer.model, "set_window"):
        from kit.modeling.modern import MAX_WINDOW_BLOCKS
        trainer.model.set_window(MAX_WINDOW_BLOCKS)
    trainer.warm_up()
    for _ in range(2):
        trainer.train_step(trainer.accum_steps)
    activities = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
    with torch.profiler.profile(activities=activities) as prof:
        for _ in range(2):
            trainer.train_step(trainer.accum_steps)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=70))


if __name__ == "__main__":
    main(sys.argv[1:])
