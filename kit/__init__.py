"""What the train_gpt2*.py scripts share, in layers (each imports only from those below it; the
README's layout picture is the rule, tests/test_layout.py checks it):

    tools/     after training: load a run and its script, tables and plots, KV-cache decoding
    loop/      the training loop every script runs, its run directory and progress
    ideas/     parts shared by a family of scripts (LightRNN, output heads)
    modeling/  the baseline GPT-2, attention variants, the record's model, losses, kernels, optimizers
    data/      datasets, shard reading and writing, downloads, the tokenizer
    core/      configuration, checkpoints, hardware, errors
"""
