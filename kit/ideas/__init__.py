"""Parts shared by a family of scripts: LightRNN's factorised embedding and the output heads."""
