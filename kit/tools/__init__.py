"""After training: load a run and its script, tables and plots of runs, KV-cache decoding."""
