"""The training loop every script runs, and its run directory, log and progress display."""
