"""Shared memory of the kit's own Triton kernels, compiled for the desktop cards: does each fit?

    python3 scripts/audit_shared_memory.py [--cards rtx3090,rtx4090] [--out DIR]

Each configuration the GPU's autotuning may pick (kit/modeling/triton_loss.py's loss kernels) and
each tile choice of the MLA decode kernel (kit/modeling/mla_decode.py) is
compiled for the card's compute capability with Triton's own compiler, no GPU needed, and its
shared memory per block is set against the card's limit (101,376 bytes on sm86/sm89; with
--cards h200 the sm90 tiles, the MLP kernels' TMA ones included, against its 232,448). Exits 1
where one does not fit. Inductor's kernels (FlexAttention, fused ops) are generated at run time
on the GPU and are not covered here. Writes audit_shared_memory.json with --out.
"""

import argparse
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton's own default, named so it does not warn

from kit.core import gpus  # noqa: E402
from kit.modeling import mla_decode, triton_loss, triton_mlp  # noqa: E402


def kit_kernel_builds(profile):
    """The loss and MLP kernels as the card's autotuning may pick them, and the MLA decode kernel's tiles for
    the card at the DeepSeek shape (latent 512 + 64) and the GPT-2 MLA model's (256 + 32)."""
    small = gpus.small_shared_memory(profile.capability)
    yield from triton_loss.kernel_builds(gpus.fp8_capable(profile.capability))
    yield from triton_mlp.kernel_builds(small, tma=tuple(profile.capability) >= (9, 0))
    yield from mla_decode.kernel_builds(512, 64, small)
    yield from mla_decode.kernel_builds(256, 32, small)


def audit(cards, builds=None) -> list:
    """[{card, kernel, shared_bytes, limit, fits}] for every build on every card."""
    rows = []
    for key in cards:
        profile = gpus.PROFILES[key]
        for name, need in gpus.kernel_needs(profile, builds or kit_kernel_builds(profile)):
            rows.append({"card": key, "kernel": name, "shared_bytes": need, "limit": profile.shared_memory_per_block,
                         "fits": need <= profile.shared_memory_per_block})
    return rows


def table(rows) -> str:
    lines = ["| card | kernel | shared memory per block | limit | fits |", "|---|---|---|---|---|"]
    lines += [f"| {r['card']} | {r['kernel']} | {r['shared_bytes']:,} B | {r['limit']:,} B | {'yes' if r['fits'] else '**no**'} |" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cards", default="rtx3090,rtx4090", help=f"comma-separated, of {', '.join(gpus.PROFILES)}")
    parser.add_argument("--out", default="", help="folder for audit_shared_memory.json")
    args = parser.parse_args(argv)
    cards = [c for c in args.cards.split(",") if c]
    unknown = [c for c in cards if c not in gpus.PROFILES]
    if unknown or triton_loss.triton is None:
        why = f"unknown card(s) {', '.join(unknown)}" if unknown else "Triton is not installed (pip install triton)"
        print(f"audit_shared_memory.py: error: {why}", file=sys.stderr)
        return 2
    rows = audit(cards)
    print(table(rows))
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "audit_shared_memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    return 0 if all(r["fits"] for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
