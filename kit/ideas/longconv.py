"""Causal long convolution by FFT, shared by the token mixers that replace attention with a learned
filter over the past (train_gpt2_lightrnn_afno.py's Fourier mixer, train_gpt2_operator.py's operator).

A kernel k[c, lag], lag = 0..T-1, applied causally: y[t, c] = sum_{s <= t} u[s, c] k[c, t - s]. The FFT
computes a circular convolution; with both signals zero-padded to 2T it equals the linear one, and the
first T outputs depend on u[0..t] only. Without the padding (padded=False, kept to show the failure)
the product wraps around and the first outputs see the last inputs.
"""

import torch


def causal_fft_conv(u, kernel, padded: bool = True):
    """u (B, T, C), kernel (C, T) -> (B, T, C), in float32 at least (FFTs of bf16 lose too much)."""
    T = u.size(1)
    n = 2 * T if padded else T
    dtype = torch.promote_types(torch.promote_types(u.dtype, kernel.dtype), torch.float32)
    spectrum = torch.fft.rfft(u.to(dtype).transpose(1, 2), n=n) * torch.fft.rfft(kernel.to(dtype), n=n)
    return torch.fft.irfft(spectrum, n=n)[..., :T].transpose(1, 2)
