"""Where the time of one cached decoding call goes: kit.tools.inference.forward_cached for --batch
sequences, one new token each, against caches already holding --context tokens; per-call time
for each cache kind, then a torch.profiler table (CUDA time first when there is a GPU).

    python scripts/profile_decode.py [--model-size 124m] [--batch 8] [--context 1024] [--calls 32]
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.core import hw  # noqa: E402
from kit.tools.inference import forward_cached, make_cache  # noqa: E402
from kit.modeling.model import GPT, gpt_config  # noqa: E402


def filled_cache(model, kind, batch, context, calls, device):
    """A cache whose sequences already hold `context` tokens (prefilled in one call each)."""
    cache = make_cache(model, kind, sequences=batch, max_len=context + calls + 1)
    sids = [cache.add_sequence() for _ in range(batch)]
    prompt = torch.randint(0, 50000, (batch, context), device=device)
    forward_cached(model, prompt, cache, sids)
    return cache, sids


def decode_calls(model, cache, sids, calls, device):
    token = torch.zeros(len(sids), 1, dtype=torch.long, device=device)
    for _ in range(calls):
        forward_cached(model, token, cache, sids)
    hw.synchronize(device)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-size", default="124m")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--context", type=int, default=1024)
    parser.add_argument("--calls", type=int, default=32)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = GPT(gpt_config(args.model_size)).to(device).eval()
    if device.type == "cuda":
        model = model.to(torch.bfloat16)
    for kind in ("contiguous", "paged"):
        cache, sids = filled_cache(model, kind, args.batch, args.context, 2 * args.calls, device)
        decode_calls(model, cache, sids, 2, device)  # warm-up
        t0 = time.perf_counter()
        decode_calls(model, cache, sids, args.calls, device)
        print(f"{kind}: {(time.perf_counter() - t0) / args.calls * 1000:.2f} ms per call (batch {args.batch}, context {args.context})", flush=True)
    with torch.profiler.profile() as prof:
        decode_calls(model, cache, sids, args.calls, device)
    sort = "self_cuda_time_total" if device.type == "cuda" else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=sort, row_limit=20))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))
    return 0


if __name__ == "__main__":
    sys.exit(main())
