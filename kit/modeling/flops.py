"""Training FLOPs per token, and model FLOPs utilisation (MFU).

Count (the PaLM paper's convention, as nanoGPT and llm.c use):
  - every nn.Linear weight does one multiply-add per token in the forward pass: 2 * W FLOPs;
    the tied output head is a Linear too, so it is counted, while embedding lookups are not;
  - attention scores QK^T and the weighted sum AV cost 2 * T * d each per token and layer
    (T = sequence length, d = width), counted over the full T x T square even though half of
    it is masked, so MFU is comparable across attention kernels;
  - the backward pass costs twice the forward: training FLOPs = 3 x forward.
So flops_per_token = 6 * linear_weights + 12 * n_layer * d * T.
"""

import torch.nn as nn


def linear_weight_count(model: nn.Module) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def attention_flops_per_token(n_layer: int, width: int, seq_len: int) -> int:
    return 12 * n_layer * width * seq_len


def flops_per_token(model: nn.Module, n_layer: int, width: int, seq_len: int) -> int:
    return 6 * linear_weight_count(model) + attention_flops_per_token(n_layer, width, seq_len)


def mfu(tokens_per_s: float, flops_per_tok: int, peak_flops, devices: int = 1):
    """Achieved training FLOP/s over the peak of the devices that produced tokens_per_s (peak_flops
    is one device's); None when the peak is unknown. A torchrun run's tokens/s counts every rank."""
    return None if not peak_flops else tokens_per_s * flops_per_tok / (peak_flops * devices)


def share_of_peak(flops: float, seconds: float, peak_flops, devices: int = 1):
    """The share of the devices' time that flops would take at peak_flops (one device's); None when the peak is unknown."""
    return flops / (peak_flops * seconds * devices) if peak_flops else None


def utilisation(flops: float, fp8_flops: float, seconds: float, peak_flops, fp8_peak_flops, devices: int = 1):
    """MFU of work part of which ran in FP8: the bf16 FLOPs against the bf16 peak plus the FP8 FLOPs against
    the FP8 peak (the share of the time the work would take at the peaks); None when a needed peak is unknown."""
    bf16 = share_of_peak(flops - fp8_flops, seconds, peak_flops, devices)
    fp8 = share_of_peak(fp8_flops, seconds, fp8_peak_flops, devices) if fp8_flops else 0.0
    return None if bf16 is None or fp8 is None else bf16 + fp8
