"""A masked (absorbing-state) diffusion language model, MDLM-style, on the baseline's backbone with bidirectional attention.

The idea (Austin et al. 2021, D3PM's absorbing state; Sahoo et al. 2024, MDLM; Nie et al. 2025, LLaDA):
corrupt a sequence by replacing each token with a [MASK] token independently with probability t,
and train one network to recover the masked tokens from the rest, seeing the whole sequence. With
the linear schedule (a token survives to time t with probability 1 - t) the negative evidence lower
bound per token is

    NELBO = E_{t ~ U(0, 1)} E_{z_t} [ (1 / t) * sum over masked positions i of -log p(x_i | z_t) ] / L,

an upper bound on the negative log-likelihood per token: the validation number is comparable with an
autoregressive model's loss as a bound (it can only overstate the diffusion model's loss). Training
samples one t per sequence (stratified over the batch, so each batch covers the range of t); evaluation
uses evenly spaced t's and a fixed seed, so a validation is repeatable. The [MASK] token is id 50257,
one past GPT-2's vocabulary; the head never predicts it. No time input: under absorbing diffusion the
clean-token posterior does not depend on t given z_t (MDLM).

Generation (`sample`; `scripts/generate.py` uses it for this script's runs): the new tokens start
masked; each of --diffusion-steps forward passes predicts every masked position and unmasks a share
of them (the most confident predictions, or random ones), so the whole continuation costs `steps`
forward passes instead of one per token. Block-wise (semi-autoregressive, LLaDA): blocks of
--block-len tokens are denoised left to right, each seeing the prompt and the blocks before it.

    python train_gpt2_diffusion.py --data webmix --max-steps 63      # the variants' token budget (33M tokens)
    python scripts/generate.py logs/<run> --prompt "The city" --max-new-tokens 128 --diffusion-steps 32
"""

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn.functional as F

from kit.core.errors import UserError
from kit.loop.train import Recipe, main
from kit.modeling.model import GPT, gpt_config
from kit.modeling.sampling import sample as sample_tokens

import train_gpt2 as baseline  # the baseline's optimizer, shared

MASK = 50257  # the absorbing state: one token past GPT-2's vocabulary


def masking_times(batch: int, eps: float, generator=None, device=None, stratified_offset: float = None) -> torch.Tensor:
    """(batch,) masking rates in [eps, 1]: (i + u) / batch for row i with one uniform draw u (stratified: one rate in
    each 1/batch of the range), or with stratified_offset as u the fixed grid (evaluation)."""
    u = torch.rand((), generator=generator, device=device) if stratified_offset is None else torch.tensor(stratified_offset, device=device)
    grid = (u + torch.arange(batch, device=device)) / batch
    return eps + (1 - eps) * grid


def diffusion_nelbo(logits: torch.Tensor, clean: torch.Tensor, masked: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Mean over all positions of masked_i * (-log p(x_i | z_t)) / t: the NELBO per token for this draw of t and masks."""
    nll = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), clean.reshape(-1), reduction="none").view_as(clean)
    return (nll * masked / t[:, None]).sum() / clean.numel()


class DiffusionGPT(GPT):
    """The baseline GPT over GPT-2's tokens plus [MASK], attending both ways; model(x, y) is the NELBO of x."""

    def __init__(self, config, eps: float = 1e-3):
        super().__init__(dataclasses.replace(config, vocab_size=config.vocab_size + 1, attn="bidirectional"))
        self.eps, self.mask_id = eps, config.vocab_size  # MASK for GPT-2's vocabulary

    def logits(self, h):
        logits = super().logits(h)
        logits[..., self.mask_id] = float("-inf")  # in place, one column (the head's backward does not need its output)
        return logits

    def corrupt(self, x):
        """(z_t, masked, t): x with each token masked with its row's probability t (fixed grid and seed in evaluation)."""
        B = x.size(0)
        generator = None
        if not self.training:  # a repeatable validation: evenly spaced t's, masks from a fixed seed
            generator = torch.Generator(device=x.device).manual_seed(0)
        t = masking_times(B, self.eps, generator, x.device, stratified_offset=0.5 if not self.training else None)
        masked = torch.rand(x.shape, generator=generator, device=x.device) < t[:, None]
        return torch.where(masked, torch.full_like(x, self.mask_id), x), masked, t

    def forward(self, idx, targets=None):
        """model(z) -> logits over the vocabulary for a (partly) masked sequence; model(x, y) -> the NELBO per token
        of the clean x (targets are not used: the model denoises its input)."""
        if targets is None:
            return self.logits(self.hidden(idx))
        z, masked, t = self.corrupt(idx)
        return diffusion_nelbo(self.logits(self.hidden(z)), idx, masked, t)


def unmask_count(remaining: int, steps_left: int) -> int:
    """Tokens to reveal at this step: the remaining ones spread evenly over the steps left."""
    return math.ceil(remaining / steps_left)


@torch.no_grad()
def sample(model: DiffusionGPT, prompt: torch.Tensor, new_tokens: int, steps: int, unmask: str = "confidence", block_len: int = 0,
           temperature: float = 1.0, seed: int = 0, top_k: int = 0, top_p: float = 1.0, on_step=None) -> torch.Tensor:
    """(B, new_tokens) tokens continuing the (B, P) prompts (all of one length) in `steps` forward passes in all.
    Each pass draws a token for every masked position (temperature, top-k, top-p as the autoregressive sampler;
    greedy at 0) and reveals some: unmask confidence (the draws the model gives the highest probability) or
    random. block_len: denoise blocks of this many tokens left to right, each with its share of the steps
    (0: one block). on_step(x) after each pass."""
    if unmask not in ("confidence", "random"):
        raise UserError(f"unmask {unmask!r}: confidence or random")
    B, P = prompt.shape
    block_len = block_len or new_tokens
    blocks = math.ceil(new_tokens / block_len)
    if steps < blocks:
        raise UserError(f"{steps} diffusion steps for {blocks} blocks of {block_len} tokens: at least one step a block")
    if P + new_tokens > model.config.block_size:
        raise UserError(f"{P} prompt + {new_tokens} new tokens exceed the model's {model.config.block_size}")
    generator = torch.Generator(device=prompt.device).manual_seed(seed)
    x = torch.cat([prompt, torch.full((B, new_tokens), model.mask_id, dtype=prompt.dtype, device=prompt.device)], dim=1)
    for b in range(blocks):
        start, end = P + b * block_len, min(P + (b + 1) * block_len, P + new_tokens)
        block_steps = steps // blocks + (b < steps % blocks)
        for s in range(block_steps):
            logits = model(x[:, :end])[:, start:end].float()
            chosen = sample_tokens(logits.reshape(-1, logits.size(-1)), temperature, top_k, top_p, generator).view(B, -1)
            probs = F.softmax(logits / max(temperature, 1e-6), dim=-1)
            still = x[:, start:end] == model.mask_id
            score = probs.gather(-1, chosen[..., None])[..., 0] if unmask == "confidence" else torch.rand(still.shape, generator=generator, device=x.device)
            score = score.masked_fill(~still, -1.0)
            k = unmask_count(int(still[0].sum()), block_steps - s)
            reveal = torch.zeros_like(still).scatter_(1, score.topk(k, dim=1).indices, True) & still
            x[:, start:end] = torch.where(reveal, chosen, x[:, start:end])
            if on_step:
                on_step(x)
    return x[:, P:]


@dataclass
class Hyperparameters(baseline.Hyperparameters):
    NOT_READ: ClassVar[tuple] = ("attn",)
    NOT_READ_WHY: ClassVar[str] = "the denoiser attends both ways (PyTorch's SDPA without a mask)"
    diffusion_eps: float = field(default=1e-3, metadata={"help": "smallest masking rate t drawn (the bound leaves out t below it)"})


def build_model(cfg: Hyperparameters):
    if not 0 < cfg.diffusion_eps < 1:
        raise UserError(f"--diffusion-eps {cfg.diffusion_eps}: between 0 and 1")
    return DiffusionGPT(gpt_config(cfg.model_size, block_size=cfg.seq_len), eps=cfg.diffusion_eps)


RECIPE = Recipe(Hyperparameters, build_model, baseline.build_optimizers, script=__file__, description=__doc__.splitlines()[0])

if __name__ == "__main__":
    sys.exit(main(RECIPE))
