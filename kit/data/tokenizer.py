"""The GPT-2 tokenizer without network: tiktoken built from the BPE files shipped in kit/data/gpt2_bpe/.

encoder.json and vocab.bpe are OpenAI's GPT-2 files (MIT); their sha256 values are the ones
tiktoken's own `gpt2` encoding checks, so this encoding is identical to tiktoken.get_encoding("gpt2").
"""

import functools
from pathlib import Path

import tiktoken
from tiktoken.load import data_gym_to_mergeable_bpe_ranks

BPE_DIR = Path(__file__).resolve().parent / "gpt2_bpe"
VOCAB_BPE_SHA256 = "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"
ENCODER_JSON_SHA256 = "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"
# The GPT-2 (r50k) pre-tokenisation pattern, as tiktoken writes it.
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""
EOT = 50256


@functools.lru_cache(maxsize=1)
def gpt2_ranks() -> dict:
    """{token's bytes: token id} of GPT-2's 50,256 ordinary tokens."""
    return data_gym_to_mergeable_bpe_ranks(
        str(BPE_DIR / "vocab.bpe"), str(BPE_DIR / "encoder.json"), vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256
    )


@functools.lru_cache(maxsize=1)
def gpt2_encoding() -> tiktoken.Encoding:
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=gpt2_ranks(), special_tokens={"<|endoftext|>": EOT})


@functools.lru_cache(maxsize=4)
def prefix_tokens(vocab_size: int) -> tuple:
    """For each token id below vocab_size, the token whose bytes are the longest proper prefix of its bytes
    (" prediction" -> " predict"), or -1 where no shorter prefix is a token (single bytes, <|endoftext|>, padding):
    the targets of the public record's prefix-token prediction (2026-07-13)."""
    ranks = gpt2_ranks()
    table = [-1] * vocab_size
    for token_bytes, token in ranks.items():
        if token >= vocab_size:
            continue
        for length in range(len(token_bytes) - 1, 0, -1):
            prefix = ranks.get(token_bytes[:length])
            if prefix is not None:
                table[token] = prefix
                break
    return tuple(table)


def encode_document(text: str) -> list[int]:
    """A document as shards store it: <|endoftext|> first, then its tokens."""
    return [EOT, *gpt2_encoding().encode_ordinary(text)]
