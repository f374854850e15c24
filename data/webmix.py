"""Stage the webmix proxy corpus: verify each xz file's content against MANIFEST.json and decompress.

    python data/webmix.py                      # from ../shared/data/webmix into data/webmix/
    python data/webmix.py --source DIR --dest DIR
    python data/webmix.py --only webmix_val_000000.bin   # some files only

webmix is real English text (blogs, Wikipedia, IMDB reviews) in the FineWeb shard format; we
measure on it because FineWeb's hosts are unreachable from our machines. Already staged files
whose checksum matches are skipped.
"""

import argparse
import hashlib
import json
import lzma
import os
import sys
from pathlib import Path

from tqdm import tqdm

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from kit.data.datasets import data_dir  # noqa: E402
from kit.core.errors import UserError  # noqa: E402

DEFAULT_SOURCE = REPO.parent / "shared" / "data" / "webmix"
CHUNK = 1 << 22


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            digest.update(block)
    return digest.hexdigest()


def decompress_verified(source: Path, dest: Path, expected_sha256: str) -> None:
    """Decompress source (.xz) to dest, hashing on the way; keep dest only if the hash matches."""
    digest = hashlib.sha256()
    tmp = dest.with_name(dest.name + ".tmp")
    with lzma.open(source) as fin, open(tmp, "wb") as fout, tqdm(unit="B", unit_scale=True, desc=dest.name, leave=False, disable=None) as bar:
        while block := fin.read(CHUNK):
            digest.update(block)
            fout.write(block)
            bar.update(len(block))
    if digest.hexdigest() != expected_sha256:
        tmp.unlink()
        raise ValueError(f"{source} decompresses to sha256 {digest.hexdigest()}, MANIFEST.json says {expected_sha256}")
    os.replace(tmp, dest)


def stage(source: Path, dest: Path, only=None, skip_missing: bool = False) -> list[Path]:
    if not (source / "MANIFEST.json").exists():
        raise UserError(f"--source {source}: no MANIFEST.json there; give the folder that holds webmix's MANIFEST.json and .xz files")
    manifest = json.loads((source / "MANIFEST.json").read_text())
    dest.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, info in manifest["files"].items():
        if only and name not in only:
            continue
        target = dest / name
        if target.exists() and sha256_of(target) == info["sha256"]:
            print(f"{name}: present, checksum ok")
        else:
            packed = source / (name + ".xz")
            if not packed.exists():
                if skip_missing:
                    continue
                raise FileNotFoundError(f"{packed} is missing")
            decompress_verified(packed, target, info["sha256"])
            print(f"{name}: {info['tokens']:,} tokens, checksum ok")
        staged.append(target)
    return staged


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(DEFAULT_SOURCE), help="folder with MANIFEST.json and the .xz files")
    parser.add_argument("--dest", default=str(data_dir() / "webmix"), help="default: data/webmix (or $KIT_DATA_DIR/webmix)")
    parser.add_argument("--only", nargs="*", help="stage only these files (names as in MANIFEST.json)")
    parser.add_argument("--skip-missing", action="store_true", help="stage the files the source has, skip the others (staging in parts)")
    args = parser.parse_args(argv)
    try:
        stage(Path(args.source), Path(args.dest), args.only, args.skip_missing)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except (OSError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
