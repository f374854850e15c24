"""Which shard files a run reads: `--data fineweb | webmix | synthetic` or explicit globs."""

import functools
import glob
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kit.data import hub
from kit.core.errors import DataError
from kit.data.shards import EOT, HEADER_BYTES, read_header, shard_is_complete, write_shard

REPO_ROOT = Path(__file__).resolve().parents[2]


def data_dir() -> Path:
    """Where datasets live: data/ in the repo, or $KIT_DATA_DIR (another disk, or tests)."""
    return Path(os.environ.get("KIT_DATA_DIR") or REPO_ROOT / "data")

# The target each dataset is judged by when --target-loss is not given (None: run all steps).
TARGET_LOSS = {"fineweb": 3.3821, "webmix": 3.64, "synthetic": None, "files": None}


@dataclass
class DataFiles:
    name: str
    train: list[Path]
    val: Path
    extra_val: dict  # name -> Path: further validation sets reported beside the main one


def resolve(cfg, is_main: bool = True) -> DataFiles:
    """Map the config's data flags to files, downloading or generating them where needed."""
    if cfg.train_files:
        return DataFiles("files", expand_glob(cfg.train_files, "--train-files"), expand_glob(cfg.val_files, "--val-files")[0], {})
    if cfg.data == "fineweb":
        return fineweb_files(cfg, is_main)
    if cfg.data == "webmix":
        return webmix_files()
    if cfg.data == "synthetic":
        return synthetic_files(is_main)
    raise DataError(f"unknown --data {cfg.data!r}")


def expand_glob(pattern: str, flag: str) -> list[Path]:
    files = sorted(Path(p) for p in glob.glob(pattern))
    if not files:
        raise DataError(f"{flag} {pattern!r} matches no file")
    return files


def fineweb_files(cfg, is_main: bool) -> DataFiles:
    """FineWeb-10B shards in data/fineweb10B, downloading the ones this run needs (0 steps, an evaluation: the
    validation shard alone)."""
    folder = data_dir() / "fineweb10B"
    needed_tokens = cfg.max_steps * cfg.batch_tokens
    num_train = min(103, max(1, math.ceil(needed_tokens / hub.FINEWEB_SHARD_TOKENS))) if cfg.max_steps else 0
    names = hub.fineweb_filenames(num_train)
    missing = [n for n in names if not shard_is_complete(folder / n)]
    if missing and is_main:
        print(fetch_plan(folder, len(names), missing, needed_tokens))
        for name in missing:
            hub.download_shard(hub.FINEWEB_REPO, name, folder)
    return DataFiles("fineweb", [folder / n for n in names[1:]], folder / names[0], {})


SHARD_BYTES = HEADER_BYTES + 2 * hub.FINEWEB_SHARD_TOKENS  # one FineWeb shard on disk: ~200 MB


def fetch_plan(folder: Path, num_shards: int, missing: list, needed_tokens: int) -> str:
    """The line printed before a download: how many shards, how much to fetch and the disk it takes;
    a DataError first where the disk under `folder` lacks the room."""
    fetch = len(missing) * SHARD_BYTES
    probe = next((p for p in [folder, *folder.parents] if p.exists()), Path("/"))
    free = shutil.disk_usage(probe).free
    if free < fetch:
        raise DataError(f"fetching {len(missing)} FineWeb shard(s) needs {fetch / 1e9:.1f} GB and {probe} has {free / 1e9:.1f} GB free: "
                        f"free some space, or point KIT_DATA_DIR at another disk")
    return (f"FineWeb: this run reads {num_shards - 1} train shard(s) and the validation shard ({needed_tokens / 1e9:.2f}B training tokens, "
            f"{num_shards * SHARD_BYTES / 1e9:.1f} GB on disk in {folder}); fetching {len(missing)} of them, {fetch / 1e9:.1f} GB "
            f"({free / 1e9:.0f} GB free there; an interrupted download resumes)")


def webmix_files() -> DataFiles:
    folder = data_dir() / "webmix"
    train = sorted(folder.glob("webmix_train_*.bin"))
    val = folder / "webmix_val_000000.bin"
    if not train or not val.exists():
        raise DataError(f"webmix shards are missing in {folder}; run `python data/webmix.py` (it reads ../shared/data/webmix)")
    extra = {"fineweb_sample": folder / "fineweb_sample_val.bin"}
    return DataFiles("webmix", train, val, {k: v for k, v in extra.items() if v.exists()})


# Synthetic data: a deterministic token stream with learnable structure, for smoke tests.
SYNTHETIC_VOCAB = 512
SYNTHETIC_TRAIN_TOKENS = 1 << 20
SYNTHETIC_VAL_TOKENS = (1 << 16) + 1024  # a validation of 65,536 tokens reads one more (the last target)


def synthetic_tokens(num_tokens: int, seed: int) -> np.ndarray:
    """Documents of 64..512 tokens; inside each, token t+1 = (5 * t + 3) % 512 most of the time."""
    rng = np.random.default_rng(seed)
    out = np.empty(num_tokens, dtype=np.int64)
    i = 0
    while i < num_tokens:
        length = int(rng.integers(64, 512))
        first = rng.integers(SYNTHETIC_VOCAB)
        noise = rng.random(length) < 0.1
        random_tokens = rng.integers(SYNTHETIC_VOCAB, size=length)
        doc = affine_chain(first, noise, random_tokens)
        take = min(length, num_tokens - i)
        out[i : i + take] = doc[:take]
        i += take
    return out


def affine_chain(first: int, noise: np.ndarray, random_tokens: np.ndarray) -> np.ndarray:
    """One synthetic document: EOT, `first`, then each token (5 * previous + 3) % 512 unless `noise` puts a
    random token there, from which the chain goes on. Vectorised: a token k steps after the last such
    anchor is A_k * anchor + B_k (mod 512), with A_k = 5^k and B_k = 3 (5^k - 1) / 4, both mod 512."""
    length = len(noise)
    doc = np.empty(length, dtype=np.int64)
    doc[0] = EOT
    positions = np.arange(length)
    anchor = (noise & (positions >= 2)) | (positions == 1)
    anchor_values = np.where(positions == 1, first, random_tokens)
    last_anchor = np.maximum.accumulate(np.where(anchor, positions, 0))
    steps = positions - last_anchor
    a, b = chain_coefficients()
    doc[1:] = (a[steps[1:]] * anchor_values[last_anchor[1:]] + b[steps[1:]]) % SYNTHETIC_VOCAB
    return doc


@functools.lru_cache(maxsize=1)
def chain_coefficients(n: int = 512):
    """(A, B) for 0..n-1 steps of x -> 5x + 3 (mod 512); documents are shorter than 512 tokens."""
    a, b = np.empty(n, dtype=np.int64), np.empty(n, dtype=np.int64)
    a[0], b[0] = 1, 0
    for k in range(1, n):
        a[k], b[k] = (5 * a[k - 1]) % SYNTHETIC_VOCAB, (5 * b[k - 1] + 3) % SYNTHETIC_VOCAB
    return a, b


def synthetic_files(is_main: bool) -> DataFiles:
    folder = data_dir() / "synthetic"
    train, val = folder / "synthetic_train_000001.bin", folder / "synthetic_val_000000.bin"
    current = all(shard_is_complete(f) and read_header(f) == n for f, n in ((train, SYNTHETIC_TRAIN_TOKENS), (val, SYNTHETIC_VAL_TOKENS)))
    if is_main and not current:  # missing, torn, or written by an older kit with other sizes
        folder.mkdir(parents=True, exist_ok=True)
        write_shard(train, synthetic_tokens(SYNTHETIC_TRAIN_TOKENS, seed=1))
        write_shard(val, synthetic_tokens(SYNTHETIC_VAL_TOKENS, seed=2))
    return DataFiles("synthetic", [train], val, {})
