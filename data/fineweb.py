"""Tokenize raw FineWeb (HuggingFaceFW/fineweb, sample-10BT parquet) into GPT-2 token shards.

    python data/fineweb.py                           # download sample/10BT and tokenize it
    python data/fineweb.py --num-files 2             # only the first 2 of its 14 parquet files
    python data/fineweb.py --parquet-dir DIR         # tokenize parquet files you already have

Output (data/fineweb10B_tok/ by default), in the llm.c shard format the train scripts read:
fineweb_val_000000.bin holds the first --val-tokens tokens (100M), then fineweb_train_NNNNNN.bin
shards of --shard-tokens tokens each. Every document starts with <|endoftext|> (50256).
Tokenization runs in --workers processes with offline tiktoken (kit/data/gpt2_bpe/); reading
parquet needs pyarrow (`pip install pyarrow`).
"""

import argparse
import multiprocessing as mp
import os
import sys
from pathlib import Path

import numpy as np
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.core.errors import DataError, run_cli  # noqa: E402
from kit.data.hub import download_file  # noqa: E402
from kit.data.shards import write_shard  # noqa: E402
from kit.data.tokenizer import encode_document  # noqa: E402

RAW_REPO = "HuggingFaceFW/fineweb"
SAMPLE_FILES = 14  # sample/10BT/000_00000.parquet .. 013_00000.parquet
DATA = Path(__file__).resolve().parent


def sample_10bt_name(index: int) -> str:
    return f"sample/10BT/{index:03d}_00000.parquet"


def check_parquet(path) -> None:
    """A parquet file starts and ends with b'PAR1'."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
        f.seek(max(0, size - 4))
        tail = f.read(4)
    if size < 12 or head != b"PAR1" or tail != b"PAR1":
        raise DataError(f"{path} is not a complete parquet file")


def download_sample(num_files: int, dest: Path) -> list[Path]:
    return [download_file(RAW_REPO, sample_10bt_name(i), dest / Path(sample_10bt_name(i)).name, check_parquet) for i in range(num_files)]


def iter_texts(parquet_files):
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError("reading parquet needs pyarrow: pip install pyarrow") from None
    for path in parquet_files:
        for batch in pq.ParquetFile(path).iter_batches(columns=["text"], batch_size=1024):
            yield from batch.column("text").to_pylist()


class ShardWriter:
    """Fills shards in order: the validation shard first, then train shards of fixed size."""

    def __init__(self, out_dir: Path, val_tokens: int, shard_tokens: int, prefix: str = "fineweb"):
        self.out_dir, self.prefix = out_dir, prefix
        self.val_tokens, self.shard_tokens = val_tokens, shard_tokens
        self.index = 0
        self.buffer = np.empty(val_tokens, dtype=np.uint16)
        self.filled = 0
        self.written = []
        out_dir.mkdir(parents=True, exist_ok=True)

    def add(self, tokens: list[int]) -> None:
        tokens = np.asarray(tokens, dtype=np.uint16)
        while len(tokens):  # a document that crosses a shard boundary continues in the next shard
            take = min(len(tokens), len(self.buffer) - self.filled)
            self.buffer[self.filled : self.filled + take] = tokens[:take]
            self.filled += take
            tokens = tokens[take:]
            if self.filled == len(self.buffer):
                self.flush()

    def flush(self) -> None:
        if not self.filled:
            return
        split = "val" if self.index == 0 else "train"
        path = self.out_dir / f"{self.prefix}_{split}_{self.index:06d}.bin"
        write_shard(path, self.buffer[: self.filled])
        self.written.append(path)
        self.index += 1
        self.buffer = np.empty(self.shard_tokens, dtype=np.uint16)
        self.filled = 0


def tokenize(parquet_files, out_dir: Path, val_tokens: int, shard_tokens: int, workers: int) -> list[Path]:
    writer = ShardWriter(out_dir, val_tokens, shard_tokens)
    with mp.get_context("spawn").Pool(workers) as pool, tqdm(unit="tok", unit_scale=True, desc="tokenizing", disable=None) as bar:
        for tokens in pool.imap(encode_document, iter_texts(parquet_files), chunksize=16):
            writer.add(tokens)
            bar.update(len(tokens))
    writer.flush()
    return writer.written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parquet-dir", help="tokenize the *.parquet files here instead of downloading")
    parser.add_argument("--num-files", type=int, default=SAMPLE_FILES, help=f"sample-10BT parquet files to download (1..{SAMPLE_FILES})")
    parser.add_argument("--raw-dir", default=str(DATA / "fineweb_raw"), help="where downloaded parquet files go")
    parser.add_argument("--out-dir", default=str(DATA / "fineweb10B_tok"))
    parser.add_argument("--val-tokens", type=int, default=100_000_000)
    parser.add_argument("--shard-tokens", type=int, default=100_000_000)
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    args = parser.parse_args(argv)
    return run_cli(lambda: f"wrote {len(tokenize(input_files(args), Path(args.out_dir), args.val_tokens, args.shard_tokens, args.workers))} shard(s) to {args.out_dir}")


def input_files(args) -> list[Path]:
    """The parquet files given with --parquet-dir, or the downloaded sample-10BT ones."""
    if not args.parquet_dir:
        return download_sample(args.num_files, Path(args.raw_dir))
    files = sorted(Path(args.parquet_dir).glob("*.parquet"))
    if not files:
        raise DataError(f"no *.parquet files in {args.parquet_dir}")
    return files


if __name__ == "__main__":
    sys.exit(main())
