"""Download pre-tokenized FineWeb-10B shards (GPT-2 tokens) from the Hugging Face hub.

    python data/cached_fineweb10B.py 9       # validation shard + the first 9 train shards (100M tokens each)

Files land in data/fineweb10B/ (or $KIT_DATA_DIR/fineweb10B/), where train_gpt2*.py --data fineweb reads them. Complete files are skipped, a partial download (`*.part`)
resumes, and every file's header and size are checked. Set HF_ENDPOINT for a mirror and
HF_TOKEN for authentication. The full baseline (4768 x 524,288 tokens) needs 26 train shards.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from kit.data.datasets import data_dir  # noqa: E402
from kit.core.errors import run_cli  # noqa: E402
from kit.data.hub import download_fineweb  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("num_train_shards", type=int, nargs="?", default=9, help="train shards to fetch (1..103)")
    parser.add_argument("--dest", default=str(data_dir() / "fineweb10B"), help="default: data/fineweb10B (or $KIT_DATA_DIR/fineweb10B)")
    args = parser.parse_args(argv)
    if not 1 <= args.num_train_shards <= 103:
        parser.error("num_train_shards must be between 1 and 103")
    return run_cli(lambda: f"{len(download_fineweb(args.num_train_shards, args.dest))} shard(s) ready in {args.dest}")


if __name__ == "__main__":
    sys.exit(main())
