"""Continue prompts with a trained model, streaming the text as it is sampled.

    python scripts/generate.py logs/my_run --prompt "The history of the city" --max-new-tokens 100
    python scripts/generate.py logs/my_run --prompt "A" --prompt "B" --temperature 0.8 --top-k 50 --top-p 0.95
    python scripts/generate.py logs/my_run --prompt "Hello" --cache none      # no KV cache (the reference)
    python scripts/generate.py logs/my_run --prompt "Hello" --cache static    # fixed-shape decoding, a CUDA graph on CUDA

The run directory is what a train script wrote (config.json, summary.json, model.safetensors or
checkpoints/). Prompts are tokenized offline (GPT-2 BPE) after a document start token. With one
prompt the text streams as it comes; with several, each is printed when all are done. The KV
cache (paged: blocks of 64 tokens) serves the baseline, the variants built on its GPT and the
speedrun's model; other models generate by recomputing the sequence (--cache none).
--cache static (the baseline's GPT and its variants) replays one captured decoding step per
token. The default, auto, takes static on CUDA where the model allows it (on one H200 it decoded
2.3x faster than recomputation at batch 1 and 1.9x faster than the other caches at batch 64:
records/2026-11-29_h200_inference_static) and the paged cache otherwise. MLA models (e.g.
train_gpt2_rtx4090_optim.py --attn mla) decode their latent cache with the Triton kernel of
kit/modeling/mla_decode.py where it runs, else with PyTorch; the closing line says which.
A diffusion model (train_gpt2_diffusion.py) has no cache: it fills all --max-new-tokens in
--diffusion-steps forward passes (--unmask confidence|random, --block-len for block-wise denoising).

    python scripts/generate.py logs/my_diffusion_run --prompt "Hello" --max-new-tokens 128 --diffusion-steps 32 --block-len 32
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.core.errors import UserError, run_cli  # noqa: E402
from kit.tools.inference import auto_cache, check_static, check_supported, generate, model_mla_decode_path, refusal  # noqa: E402
from kit.tools.runs import load_model  # noqa: E402
from kit.data.tokenizer import EOT, gpt2_encoding  # noqa: E402


class Streamer:
    """Prints one sequence's tokens as text, holding back bytes until they form whole characters."""

    def __init__(self, out=sys.stdout):
        self.pending, self.out = b"", out

    def __call__(self, i, token):
        self.pending += gpt2_encoding().decode_single_token_bytes(token)
        try:
            text, self.pending = self.pending.decode("utf-8"), b""
        except UnicodeDecodeError:
            return
        self.out.write(text)
        self.out.flush()


def main(argv=None) -> str:
    """Generate; returns the closing line (tokens, time, path)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--prompt", action="append", required=True)
    parser.add_argument("--max-new-tokens", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=0.8, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=50, help="0: no limit")
    parser.add_argument("--top-p", type=float, default=0.95)
    parser.add_argument("--cache", choices=["auto", "paged", "contiguous", "static", "none"], default="auto",
                        help="static: contiguous, decoded at fixed shapes through a CUDA graph on CUDA (kit.modeling.model.GPT only); "
                             "auto: static on CUDA where it applies, else paged")
    parser.add_argument("--diffusion-steps", type=int, default=0, help="diffusion models: forward passes for the whole continuation (0: one per new token)")
    parser.add_argument("--unmask", choices=["confidence", "random"], default="confidence", help="diffusion models: which masked positions each pass reveals")
    parser.add_argument("--block-len", type=int, default=0, help="diffusion models: denoise blocks of this many tokens left to right (0: one block)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens {args.max_new_tokens}: at least 1")
    if args.temperature < 0 or args.top_k < 0 or not 0 < args.top_p <= 1:
        raise UserError("--temperature and --top-k must not be negative, and --top-p lies in (0, 1]")

    model, _, module = load_model(args.run_dir, args.device)
    if isinstance(model, getattr(module, "DiffusionGPT", ())):
        return diffusion_generate(model, module, args)
    cache = args.cache
    if cache == "auto":  # already checked: static only where the model allows it
        cache = auto_cache(model, args.device)
    elif cache == "static" and (reason := refusal(check_static, model)):
        print(f"{reason}; using the contiguous cache", file=sys.stderr)
        cache = "contiguous"
    if cache != "none" and (reason := refusal(check_supported, model)):
        print(f"{reason}; generating without a cache", file=sys.stderr)
        cache = "none"
    encoding = gpt2_encoding()
    prompts = [[EOT, *encoding.encode_ordinary(p)] for p in args.prompt]
    streamer = Streamer() if len(prompts) == 1 else None
    if streamer:
        print(args.prompt[0], end="", flush=True)
    t0 = time.perf_counter()
    outputs = generate(model, prompts, args.max_new_tokens, cache=cache, temperature=args.temperature, top_k=args.top_k,
                       top_p=args.top_p, stop_token=EOT, seed=args.seed, on_token=streamer)
    seconds = time.perf_counter() - t0
    if streamer:
        print()
    else:
        for prompt, out in zip(args.prompt, outputs):
            print(f"--- {prompt}{encoding.decode([t for t in out if t != EOT])}")
    new = sum(len(o) for o in outputs)
    path = cache + (", CUDA graph" if cache == "static" and args.device.startswith("cuda") else "")
    if decode := model_mla_decode_path(model, cache):
        path += ", " + decode
    return f"{new} tokens in {seconds:.2f} s ({new / seconds:.1f} tokens/s, cache: {path}, device: {args.device})"


def diffusion_generate(model, module, args) -> str:
    """Each prompt's continuation from the diffusion model in --diffusion-steps passes (the prompts one after another)."""
    encoding = gpt2_encoding()
    steps = args.diffusion_steps or args.max_new_tokens
    t0 = time.perf_counter()
    for text in args.prompt:
        prompt = torch.tensor([[EOT, *encoding.encode_ordinary(text)]], device=args.device)
        new = module.sample(model, prompt, args.max_new_tokens, steps, args.unmask, args.block_len, args.temperature, args.seed,
                           args.top_k, args.top_p)
        print(f"--- {text}{encoding.decode([t for t in new[0].tolist() if t < EOT])}")
    seconds = time.perf_counter() - t0
    new = args.max_new_tokens * len(args.prompt)
    blocks = f", blocks of {args.block_len}" if args.block_len else ""
    return (f"{new} tokens in {seconds:.2f} s ({new / seconds:.1f} tokens/s, diffusion: {steps} steps, unmask {args.unmask}{blocks}, "
            f"device: {args.device})")


if __name__ == "__main__":
    sys.exit(run_cli(main))
