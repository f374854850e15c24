"""Data: the datasets, shard reading and writing, downloads from the hub, the offline GPT-2 tokenizer."""
