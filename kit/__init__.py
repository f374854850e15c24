"""The shared parts of the GPT-2 speedrun kit: every train_gpt2*.py script imports these."""
