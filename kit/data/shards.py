"""The llm.c token shard format: 256 x int32 header, then uint16 tokens.

Header: [MAGIC, VERSION, token_count, 0, ...]. Every document starts with EOT (50256).
Shards are read through numpy memory maps, so a 100M-token shard costs no RAM up front.
"""

import os
from pathlib import Path

import numpy as np

from kit.core.errors import DataError

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
EOT = 50256


def write_shard(path, tokens) -> None:
    """Write `tokens` (any int array with values < 2**16) atomically as one shard."""
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise ValueError("shard tokens must lie in [0, 65535]")
    header = np.zeros(HEADER_INTS, dtype=np.int32)
    header[:3] = (MAGIC, VERSION, tokens.size)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())
    os.replace(tmp, path)


def read_header(path) -> int:
    """Check a shard's header and size; return its token count or raise DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"shard {path} does not exist")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"shard {path} is truncated ({size} bytes, shorter than the header); delete it and fetch it again")
    header = np.fromfile(path, dtype=np.int32, count=HEADER_INTS)
    if header[0] != MAGIC:
        raise DataError(f"shard {path} has magic number {header[0]}, expected {MAGIC}: not an llm.c token shard")
    if header[1] != VERSION:
        raise DataError(f"shard {path} has version {header[1]}, expected {VERSION}")
    count = int(header[2])
    expected = HEADER_BYTES + 2 * count
    if size != expected:
        raise DataError(
            f"shard {path} is truncated or padded: header says {count} tokens ({expected} bytes), file has {size} bytes; "
            "delete it and fetch it again"
        )
    return count


def shard_is_complete(path) -> bool:
    try:
        read_header(path)
        return True
    except DataError:
        return False


def open_shard(path) -> np.memmap:
    """Memory-map a shard's tokens (uint16) after checking its header."""
    count = read_header(path)
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(count,))
