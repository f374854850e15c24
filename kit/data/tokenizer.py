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
def gpt2_encoding() -> tiktoken.Encoding:
    ranks = data_gym_to_mergeable_bpe_ranks(
        str(BPE_DIR / "vocab.bpe"), str(BPE_DIR / "encoder.json"), vocab_bpe_hash=VOCAB_BPE_SHA256, encoder_json_hash=ENCODER_JSON_SHA256
    )
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={"<|endoftext|>": EOT})


def encode_document(text: str) -> list[int]:
    """A document as shards store it: <|endoftext|> first, then its tokens."""
    return [EOT, *gpt2_encoding().encode_ordinary(text)]
