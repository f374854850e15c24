"""Drawing tokens from logits: greedy, temperature, top-k and top-p (the autoregressive decoder's and the
diffusion sampler's)."""

import torch


def sample(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, generator=None):
    """Next tokens (B,) from logits (B, V): greedy at temperature 0, else softmax(logits / T)
    restricted to the top_k tokens and to the smallest set whose probability reaches top_p."""
    if temperature <= 0:
        return logits.argmax(-1)
    logits = logits.float() / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop = cumulative - sorted_logits.softmax(-1) >= top_p  # tokens after the set already reaches top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)
