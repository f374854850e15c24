#!/usr/bin/env bash
# Wait (up to 10 min) until staged parts 1 and 2 are in data/webmix/: 3 train shards and fineweb_sample.
# A lease stages part 2 after its passes start; a run that listed the shards while one was still being
# written would read a partial file.
for _ in $(seq 600); do
  [ "$(ls data/webmix/webmix_train_*.bin 2>/dev/null | wc -l)" -ge 3 ] && [ -f data/webmix/fineweb_sample_val.bin ] && exit 0
  sleep 1
done
echo "wait_for_shards: parts 1 and 2 of webmix are not staged in data/webmix/ after 10 min" >&2
exit 1
