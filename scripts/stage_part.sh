#!/usr/bin/env bash
# Fill .data/webmix (git-ignored, carried to the lent GPU) with one part of the webmix xz files,
# each part small enough for one call (<= ~60 MB): 1 = val + fineweb_sample + train 1,
# 2 = train 2-3, 3 = train 4-5, 4 = train 6-7. On the GPU each part is then staged with
#   python3 data/webmix.py --source .data/webmix --skip-missing
# and the decompressed shards stay in data/webmix/ for the rest of that machine's lease.
#   bash scripts/stage_part.sh PART [SOURCE] [DEST]   (DEST default .data/webmix; with .data/pN per part all
#   four can be prepared at once and each call carries one of them)
set -eu
part=$1
src=${2:-../shared/data/webmix}
case $part in
  1) files="webmix_val_000000.bin.xz fineweb_sample_val.bin.xz webmix_train_000001.bin.xz" ;;
  2) files="webmix_train_000002.bin.xz webmix_train_000003.bin.xz" ;;
  3) files="webmix_train_000004.bin.xz webmix_train_000005.bin.xz" ;;
  4) files="webmix_train_000006.bin.xz webmix_train_000007.bin.xz" ;;
  *) echo "part must be 1..4"; exit 2 ;;
esac
dest=${3:-.data/webmix}
rm -rf "$dest" && mkdir -p "$dest"
cp "$src/MANIFEST.json" "$dest/"
for f in $files; do cp "$src/$f" "$dest/"; done
du -sh "$dest"
