#!/bin/sh
# The README's first command: install what is needed, build, and show vbdd
# serving a (simulated) guest: data written through the blkif ring, read
# back and compared, then a verified random workload.
set -eu
cd "$(dirname "$0")/.."

./scripts/install-deps.sh
[ -f build/build.ninja ] || meson setup build
ninja -C build

SIM=build/tests/sim/front/vbd-sim
export VBD_SIM_VBDD=build/tests/sim/vbdd-sim
W=$(mktemp -d /var/tmp/vbd-demo.XXXXXX)
trap 'rm -rf "$W"' EXIT

echo
echo "== a 64 MiB raw image, 8 MiB of random data written at offset 1 MiB through vbdd"
truncate -s 64M "$W/disk.img"
head -c 8M /dev/urandom >"$W/data"
$SIM dd --image "raw:$W/disk.img" --if "$W/data" --seek 1M
echo "== read back through vbdd and compared"
$SIM dd --image "raw:$W/disk.img" --of "$W/back" --skip 1M --count 8M
cmp "$W/data" "$W/back"
echo "   identical ($(stat -c %s "$W/back") bytes)"
echo "== the image file holds the same bytes"
cmp "$W/data" "$W/disk.img" --ignore-initial=0:1048576 --bytes=8388608
echo "   identical"
echo "== 5 s of 4 KiB random reads and writes at queue depth 32, every read verified"
$SIM bench --image "raw:$W/disk.img" --rw randrw --bs 4096 --iodepth 32 --runtime 5 --verify
echo
echo "demo passed"
