"""Parts shared by a family of scripts: LightRNN's factorised embedding, the output heads, causal FFT convolution."""
