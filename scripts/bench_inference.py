"""Inference benchmark: generation speed with and without KV caches, cache memory per token, and
what a cache can and cannot do for teacher-forced validation.

    python scripts/bench_inference.py --out logs/bench_inference                 # random 124M weights
    python scripts/bench_inference.py --run-dir logs/my_run --out logs/bench_inference
    python scripts/bench_inference.py --attention mla --mla-latent 256 --mla-decode torch,triton --caches paged,static

1. Generation: tokens/s for each --batches x --caches (none = recompute the whole sequence for
   every new token; static = the contiguous cache decoded through a CUDA graph), --prompt-len
   tokens of prompt, --new-tokens greedy tokens, bf16 on CUDA; the median of --repeats timed
   runs and their range (batch-1 decoding is bound by host time, which varies between runs).
   For an MLA model (--attention mla, or a run of one) each --mla-decode path is timed: the
   Triton kernel of kit/modeling/mla_decode.py, or PyTorch's gather and matmuls.
2. Cache memory per token: MHA (the baseline), GQA (--gqa-heads key/value heads) and MLA
   (--mla-latent + its rotary key), from the allocated cache tensors (bytes of one token's
   keys and values over all layers) and from CUDA's allocator where there is one.
3. Teacher-forced validation: the loss of --eval-tokens tokens in one causal pass per
   sequence, against scoring the same tokens one at a time through the cache. The losses
   agree; the timing shows why a cache cannot speed validation up: a causal pass already
   computes every key and value once, and the cache only spares recomputing them across
   separate calls, which validation never makes.
4. Validation speed: one no-grad pass over --eval-speed-tokens tokens as a plain evaluation
   loop would run it (fp32, eager, batch --eval-batch) and with each speed-up added in turn:
   bf16 autocast, a larger batch (--eval-speed-batch), torch.compile (CUDA only). Same tokens,
   same loss up to bf16 rounding.
Writes bench_inference.json and .md into --out.
"""

import argparse
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.core import hw  # noqa: E402
from kit.modeling.attention import GroupedQueryAttention, MultiLatentAttention  # noqa: E402
from kit.tools import inference  # noqa: E402
from kit.tools.inference import forward_cached, generate, make_cache  # noqa: E402
from kit.modeling.model import GPT, Block, gpt_config  # noqa: E402


def timed(fn, device):
    hw.synchronize(device)
    t0 = time.perf_counter()
    result = fn()
    hw.synchronize(device)
    return result, time.perf_counter() - t0


def random_model(size: str, attention=None, device="cpu"):
    torch.manual_seed(0)
    block = functools.partial(Block, attention=attention) if attention else Block
    return GPT(gpt_config(size), block=block).to(device).eval()


def decode_paths(model, args) -> list:
    """The MLA decode paths to time (--mla-decode) for an MLA model; ['-'] for any other."""
    is_mla = isinstance(model, GPT) and isinstance(model.h[0].attn, MultiLatentAttention)
    return args.mla_decode if is_mla else ["-"]


def generation_rows(model, args, device, dtype):
    rows = []
    for path in decode_paths(model, args):
        if path != "-":
            inference.MLA_DECODE["path"] = path
        rows += [dict(r, mla_decode=path) for r in generation_rows_on_one_path(model, args, device, dtype)]
    inference.MLA_DECODE["path"] = "auto"
    return rows


def generation_rows_on_one_path(model, args, device, dtype):
    rows = []
    g = torch.Generator().manual_seed(0)
    for batch in args.batches:
        prompts = torch.randint(0, 50000, (batch, args.prompt_len), generator=g).tolist()
        for cache in args.caches:
            path = f" MLA decode {inference.MLA_DECODE['path']}" if decode_paths(model, args) != ["-"] else ""
            print(f"generation batch {batch:3d} cache {cache:10s}{path}: warming up and timing {args.repeats} runs ...", flush=True)
            with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
                # warm-up over the full length: every cache length is a new attention shape, whose first use on a
                # GPU pays one-time kernel selection (measured 2026-11-29: the first cached variant timed, after a
                # 2-token warm-up, ran 3-5x slower than the next one over the same lengths)
                generate(model, prompts, args.new_tokens, cache=cache)
                runs = [timed(lambda: generate(model, prompts, args.new_tokens, cache=cache), device) for _ in range(args.repeats)]
            new = sum(len(o) for o in runs[0][0])
            rates = sorted(new / seconds for _, seconds in runs)
            rows.append({"part": "generation", "batch": batch, "cache": cache, "new_tokens": new, "seconds": [seconds for _, seconds in runs],
                         "tokens_per_s": statistics.median(rates), "tokens_per_s_range": [rates[0], rates[-1]]})
            print(f"generation batch {batch:3d} cache {cache:10s}{path}: {statistics.median(rates):10.1f} tokens/s "
                  f"(median of {len(rates)}: {rates[0]:.1f} .. {rates[-1]:.1f})", flush=True)
    return rows


def cache_memory_rows(measured, args, device, dtype):
    """Cache bytes per token of the measured model's shape with MHA, GQA and MLA (kit.modeling.model.GPT's shape: the
    given run's, or --model-size's); for another kind of model (the speedrun's), its own cache only."""
    rows = []
    kinds = {"mha": None, "gqa": functools.partial(GroupedQueryAttention, n_kv_head=args.gqa_heads),
             "mla": functools.partial(MultiLatentAttention, kv_latent=args.mla_latent, rope_dim=32)}
    if not isinstance(measured, GPT):
        kinds = {"this model": "itself"}
    for kind, attention in kinds.items():
        torch.manual_seed(0)
        if attention == "itself":
            model = measured
        else:
            block = functools.partial(Block, attention=attention) if attention else Block
            model = GPT(measured.config, block=block).to(device).eval().to(dtype)
        before = torch.cuda.memory_allocated(device) if device.type == "cuda" else None
        cache = make_cache(model, "paged", sequences=1, max_len=1024)
        allocated = (torch.cuda.memory_allocated(device) - before) / 1024 if before is not None else None
        rows.append({"part": "cache_memory", "attention": kind, "bytes_per_token": cache.bytes_per_token(),
                     "allocator_bytes_per_token": allocated})
        print(f"cache {kind}: {cache.bytes_per_token()} bytes per token", flush=True)
        del cache
    return rows


def mean_loss(net, x, y, batch: int, dtype):
    """Teacher-forced mean loss over the rows of x, batch rows per no-grad pass (autocast unless fp32)."""
    total = torch.zeros((), device=x.device, dtype=torch.float64)
    with torch.no_grad(), torch.autocast(x.device.type, dtype=dtype, enabled=dtype != torch.float32):
        for i in range(0, len(x), batch):
            total += net(x[i:i + batch], y[i:i + batch]).double() * len(x[i:i + batch])
    return (total / len(x)).item()


def eval_rows(model, args, device, dtype):
    seq = args.eval_seq_len
    n_seqs = max(1, args.eval_tokens // seq)
    idx = torch.randint(0, 50000, (n_seqs, seq + 1), generator=torch.Generator().manual_seed(1)).to(device)
    x, y = idx[:, :-1], idx[:, 1:]

    def teacher_forced():
        return mean_loss(model, x, y, args.eval_batch, dtype)

    def token_by_token():  # the same tokens scored through the cache, one position per call
        with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
            cache = make_cache(model, "paged", sequences=n_seqs, max_len=seq)
            sids = [cache.add_sequence() for _ in range(n_seqs)]
            losses = [F.cross_entropy(forward_cached(model, x[:, t:t + 1], cache, sids)[:, 0].float(), y[:, t], reduction="sum") for t in range(seq)]
            return (sum(losses) / (n_seqs * seq)).item()

    teacher_forced()  # warm-up
    loss_tf, seconds_tf = timed(teacher_forced, device)
    loss_cached, seconds_cached = timed(token_by_token, device)
    print(f"validation of {n_seqs * seq} tokens: one causal pass {seconds_tf:.3f} s (loss {loss_tf:.4f}); "
          f"token by token with the cache {seconds_cached:.3f} s (loss {loss_cached:.4f})", flush=True)
    return [{"part": "validation", "tokens": n_seqs * seq, "teacher_forced_s": seconds_tf, "teacher_forced_loss": loss_tf,
             "cached_token_by_token_s": seconds_cached, "cached_loss": loss_cached}]


def validation_speed_settings(args, device):
    """(label, dtype, batch, compiled): the plain loop first, then one speed-up more per row."""
    settings = [("fp32, eager", torch.float32, args.eval_batch, False)]
    if device.type == "cuda":
        settings += [("bf16, eager", torch.bfloat16, args.eval_batch, False),
                     ("bf16, eager, larger batch", torch.bfloat16, args.eval_speed_batch, False),
                     ("bf16, compiled, larger batch", torch.bfloat16, args.eval_speed_batch, True)]
    return settings


def validation_speed_rows(model, args, device):
    seq = args.eval_seq_len
    n_seqs = max(1, args.eval_speed_tokens // seq)
    idx = torch.randint(0, 50000, (n_seqs, seq + 1), generator=torch.Generator().manual_seed(2)).to(device)
    x, y = idx[:, :-1], idx[:, 1:]
    compiled = None
    rows = []
    for label, dtype, batch, use_compile in validation_speed_settings(args, device):
        batch = min(batch, n_seqs)
        if use_compile and compiled is None:
            compiled = torch.compile(model)
        whole = n_seqs // batch * batch  # whole batches only: a compiled model meets one shape
        one_pass = functools.partial(mean_loss, compiled if use_compile else model, x[:whole], y[:whole], batch, dtype)
        one_pass()  # warm-up (and the compilation)
        loss, seconds = timed(one_pass, device)
        tokens = whole * seq
        rows.append({"part": "validation_speed", "setting": label, "batch": batch, "tokens": tokens, "seconds": seconds,
                     "tokens_per_s": tokens / seconds, "loss": loss})
        print(f"validation pass, {label} (batch {batch}): {tokens / seconds:,.0f} tokens/s, loss {loss:.4f}", flush=True)
    return rows


def markdown(rows, device_name) -> str:
    lines = [f"Device: {device_name}", "", "| batch | cache | MLA decode | tokens/s (median) | range |", "|---|---|---|---|---|"]
    lines += [f"| {r['batch']} | {r['cache']} | {r['mla_decode']} | {r['tokens_per_s']:,.1f} | {r['tokens_per_s_range'][0]:,.1f} .. {r['tokens_per_s_range'][1]:,.1f} |"
              for r in rows if r["part"] == "generation"]
    lines += ["", "| attention | cache bytes per token (tensors) | (CUDA allocator) |", "|---|---|---|"]
    lines += [f"| {r['attention']} | {r['bytes_per_token']:,} | {r['allocator_bytes_per_token'] or '-'} |" for r in rows if r["part"] == "cache_memory"]
    speed = [r for r in rows if r["part"] == "validation_speed"]
    if speed:
        lines += ["", "| validation pass | batch | tokens/s | vs the first row | loss |", "|---|---|---|---|---|"]
        lines += [f"| {r['setting']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {r['tokens_per_s'] / speed[0]['tokens_per_s']:.2f}x | {r['loss']:.4f} |"
                  for r in speed]
    for r in rows:
        if r["part"] == "validation":
            lines += ["", f"Validation of {r['tokens']:,} tokens: one causal pass per sequence {r['teacher_forced_s']:.3f} s "
                          f"(loss {r['teacher_forced_loss']:.4f}); one token at a time through the KV cache {r['cached_token_by_token_s']:.3f} s "
                          f"(loss {r['cached_loss']:.4f})."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run-dir", help="a trained run (default: random weights of --model-size)")
    parser.add_argument("--model-size", default="124m")
    parser.add_argument("--attention", choices=["mha", "mla"], default="mha", help="the random model's attention (mla: --mla-latent + 32 rotary)")
    parser.add_argument("--mla-decode", type=lambda s: s.split(","), default=["auto"],
                        help="for an MLA model, the decode paths to time: auto, triton (kit/modeling/mla_decode.py), torch")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batches", type=lambda s: [int(x) for x in s.split(",")], default=[1, 64])
    parser.add_argument("--caches", type=lambda s: s.split(","), default=["none", "contiguous", "paged", "static"])
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3, help="timed generation runs per row (after one warm-up run)")
    parser.add_argument("--gqa-heads", type=int, default=4)
    parser.add_argument("--mla-latent", type=int, default=128)
    parser.add_argument("--eval-tokens", type=int, default=65_536)
    parser.add_argument("--eval-seq-len", type=int, default=1024)
    parser.add_argument("--eval-batch", type=int, default=16)
    parser.add_argument("--eval-speed-tokens", type=int, default=1_048_576)
    parser.add_argument("--eval-speed-batch", type=int, default=64)
    parser.add_argument("--out", default="logs/bench_inference")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if args.run_dir:
        from kit.tools.runs import load_model

        model = load_model(args.run_dir, args.device)[0]
    else:
        attention = functools.partial(MultiLatentAttention, kv_latent=args.mla_latent, rope_dim=32) if args.attention == "mla" else None
        model = random_model(args.model_size, attention, device=device)
    print(f"model: {'the run in ' + args.run_dir if args.run_dir else 'random weights, ' + args.model_size} on {hw.device_name(device)}", flush=True)
    rows = generation_rows(model, args, device, dtype) + cache_memory_rows(model, args, device, dtype) + eval_rows(model, args, device, dtype)
    rows += validation_speed_rows(model, args, device)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_inference.json").write_text(json.dumps({"device": hw.device_name(device), "args": vars(args), "rows": rows}, indent=1))
    (out / "bench_inference.md").write_text(markdown(rows, hw.device_name(device)))
    print(markdown(rows, hw.device_name(device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
