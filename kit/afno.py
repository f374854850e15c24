"""A causal token mixer in the spirit of AFNO (adaptive Fourier neural operators).

AFNO mixes tokens by a non-linear MLP applied to the sequence's Fourier transform. That cannot
be causal: any non-linear function of the spectrum makes every output depend on every input,
future ones included. What survives causality is the linear part, a long convolution, done with
FFTs: a kernel k[c, lag] that is zero for negative lags, both signals zero-padded to 2T so the
circular product of the transforms is the linear convolution, and only the first T outputs kept.
Then y[t] depends on x[0..t] only. Without the padding the convolution wraps around and the
first outputs see the last inputs (tests/test_afno.py shows the causality check catching it).

The mixer here: a per-token block-diagonal MLP (AFNO's block-diagonal weights, applied where
they are causal: to each token), a depthwise causal FFT convolution over the sequence with a
learned kernel, soft-thresholded (AFNO's sparsity, applied to the kernel, which keeps it
causal), and a residual-friendly output projection.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F


class BlockDiagonalMLP(nn.Module):
    """Channels split into n_blocks groups, each with its own two-layer MLP (no mixing across groups)."""

    def __init__(self, width: int, n_blocks: int, hidden_factor: int = 1):
        super().__init__()
        if width % n_blocks:
            raise ValueError(f"width {width} is not a multiple of n_blocks {n_blocks}")
        size = width // n_blocks
        self.n_blocks = n_blocks
        self.w1 = nn.Parameter(torch.randn(n_blocks, size, size * hidden_factor) * size**-0.5)
        self.w2 = nn.Parameter(torch.randn(n_blocks, size * hidden_factor, size) * (size * hidden_factor) ** -0.5)

    def forward(self, x):
        B, T, C = x.shape
        blocks = x.view(B, T, self.n_blocks, C // self.n_blocks)
        h = F.gelu(torch.einsum("btns,nsh->btnh", blocks, self.w1))
        return torch.einsum("btnh,nhs->btns", h, self.w2).reshape(B, T, C)


class CausalFourierMixer(nn.Module):
    def __init__(self, width: int, max_len: int, n_blocks: int = 8, shrink: float = 0.01, causal_padding: bool = True):
        super().__init__()
        self.mlp = BlockDiagonalMLP(width, n_blocks)
        decay = torch.exp(-torch.arange(max_len, dtype=torch.float32) / 32.0)  # start near a short, recent-heavy filter
        self.kernel = nn.Parameter(0.1 * torch.randn(width, max_len) * decay)
        self.shrink = shrink
        self.causal_padding = causal_padding  # False only to demonstrate the leak a circular FFT causes
        self.proj = nn.Linear(width, width)
        self.proj.residual_projection = True

    def forward(self, x):
        B, T, C = x.shape
        u = self.mlp(x).float()
        kernel = F.softshrink(self.kernel[:, :T].float(), self.shrink)  # (C, T): weights for lags 0..T-1
        n = 2 * T if self.causal_padding else T
        spectrum = torch.fft.rfft(u.transpose(1, 2), n=n) * torch.fft.rfft(kernel, n=n)
        y = torch.fft.irfft(spectrum, n=n)[..., :T].transpose(1, 2)
        return self.proj(y.type_as(x))


def fourier_mixer(config, n_blocks: int = 8):
    """A CausalFourierMixer sized for a kit.model.GPTConfig: use as Block(config, attention=fourier_mixer)."""
    return CausalFourierMixer(config.n_embd, config.block_size, n_blocks=n_blocks)
