#!/bin/bash
# SPDX-License-Identifier: LGPL-2.1-or-later
# vbd-ctl layer create: an application prepared once as a qcow2 layer over
# an ext4 base, from a directory (cp -a) and from a script, through the
# mount code (vbdd, nbdfuse, a loop device).  Each layer is cloned and read
# back through a cold mount of the clone and through the simulated guest
# (vbd-sim reads the disk over the ring; debugfs takes the files out of
# what it read), checksums, modes, owners, links compared with the source;
# qemu-img check and info on the chain.  Failures (a failing script, a
# full filesystem, SIGTERM, a missing base, an existing output) leave no
# layer file and nothing mounted or running.
. "$(dirname "$0")/../lib/functions.sh"
: "${VBD_CTL:?}" "${VBDD:?}"
[ "$(id -u)" -eq 0 ] || { echo "SKIP: mounting needs root"; exit 77; }
[ -c /dev/fuse ] || { echo "SKIP: no /dev/fuse"; exit 77; }
for p in losetup mkfs.ext4 debugfs nbdfuse sfdisk qemu-img blkid partx python3; do
        command -v $p >/dev/null || { echo "SKIP: no $p (scripts/install-deps.sh)"; exit 77; }
done
losetup -f >/dev/null 2>&1 || { echo "SKIP: no free loop device"; exit 77; }

export VBD_VBDD=$VBDD VBD_RUN_DIR=$tmp/run VBD_MOUNT_VIA=fuse
MiB=$((1 << 20))
mnt=$tmp/mnt
mkdir -p "$mnt"
vctl() { "$VBD_CTL" "$@"; }

cleanup_all() {
        local d
        vctl umount "$mnt" >/dev/null 2>&1
        for d in "$tmp"/run/mounts/m-*/root; do
                [ -d "$d" ] && vctl umount "$d" >/dev/null 2>&1
        done
}
cleanup_fn cleanup_all

. "$(dirname "$0")/mount-lib.sh"

# must_fail WHAT PATTERN OUTPUT ARGS...: vbd-ctl ARGS fails saying PATTERN,
# OUTPUT does not exist afterwards, nothing is left behind.
must_fail() {
        local what=$1 pat=$2 out=$3
        shift 3
        if vctl "$@" >"$tmp/out" 2>"$tmp/err"; then
                fail "$what: succeeded: $(cat "$tmp/out")"
        elif ! grep -q -- "$pat" "$tmp/err"; then
                fail "$what: want '$pat', got: $(cat "$tmp/err")"
        else
                echo "$what: refused: $(tail -1 "$tmp/err")"
        fi
        [ -e "$out" ] && fail "$what: $out left behind"
        leftovers "$what"
}

# manifest DIR [content]: one line per entry under DIR (lost+found and the
# base's own file left out): type, mode, owner, link count, size, sha256,
# symlink target; "content": type, mode (without set-id bits), size, sha256
# and target only (debugfs rdump keeps neither hard links nor set-id bits).
manifest() {
        python3 - "$1" "${2:-}" <<'EOF'
import hashlib, os, stat, sys
top, content = sys.argv[1], sys.argv[2] == "content"
out = []
for d, dirs, files in os.walk(top):
    for n in dirs + files:
        p = os.path.join(d, n)
        rel = os.path.relpath(p, top)
        if rel.split("/")[0] in ("lost+found", "base.txt"):
            continue
        st = os.lstat(p)
        # rdump drops the set-id bits
        mode = st.st_mode & ~0o7000 if content else st.st_mode
        line = [rel, stat.filemode(mode)]
        if not content:
            line.append("%d:%d" % (st.st_uid, st.st_gid))
        if stat.S_ISREG(st.st_mode):
            if not content:
                line.append("links=%d" % st.st_nlink)
            line.append(str(st.st_size))
            line.append(hashlib.sha256(open(p, "rb").read()).hexdigest())
        elif stat.S_ISLNK(st.st_mode):
            line.append("-> " + os.readlink(p))
        out.append(" ".join(line))
print("\n".join(sorted(out)))
EOF
}

# check_clone WHAT IMAGE MANIFEST [PARTITION]: the files read back through
# a cold mount of IMAGE and through the simulated guest (MANIFEST.content).
check_clone() {
        local what=$1 img=$2 want=$3 part=${4:-}
        vctl mount "$img" "$mnt" ${part:+--partition $part} >"$tmp/out" 2>&1 || {
                fail "$what: mount: $(cat "$tmp/out")"
                return
        }
        manifest "$mnt" >"$tmp/got"
        diff -u "$want" "$tmp/got" >"$tmp/diff" || fail "$what: through a mount: $(cat "$tmp/diff")"
        [ "$(cat "$mnt/base.txt" 2>/dev/null)" = "from the base" ] ||
                fail "$what: the base's file is not there"
        vctl umount "$mnt" >/dev/null 2>&1 || fail "$what: umount"
        leftovers "$what: mount of the clone"
        # the guest's view: vbd-sim reads the whole disk over the ring
        rm -rf "$tmp/guest.raw" "$tmp/rdump"
        vbd_sim "qcow2:$img" dd --mode r --of "$tmp/guest.raw" >/dev/null 2>&1 ||
                { fail "$what: vbd-sim dd"; return; }
        qemu-img convert -q -O raw "$img" "$tmp/qemu.raw" || fail "$what: qemu-img convert"
        cmp -s "$tmp/guest.raw" "$tmp/qemu.raw" || fail "$what: the guest's view differs from qemu-img's"
        local fs="$tmp/guest.raw"
        if [ -n "$part" ]; then # debugfs at the partition's offset
                local start
                start=$(partx -g -o START -n "$part" "$tmp/guest.raw" | tr -d ' ')
                fs="$tmp/guest.raw?offset=$((start * 512))"
        fi
        mkdir -p "$tmp/rdump"
        debugfs -R "rdump / $tmp/rdump" "$fs" >/dev/null 2>&1 || fail "$what: debugfs rdump"
        manifest "$tmp/rdump" content >"$tmp/got"
        diff -u "$want.content" "$tmp/got" >"$tmp/diff" ||
                fail "$what: through the simulated guest: $(head -20 "$tmp/diff")"
}

# --- the base: ext4 made with mkfs.ext4 -d, as qcow2 ---
mkdir -p "$tmp/basefiles"
echo "from the base" >"$tmp/basefiles/base.txt"
truncate -s $((128 * MiB)) "$tmp/fs.raw"
mkfs.ext4 -q -F -d "$tmp/basefiles" "$tmp/fs.raw" || fail "mkfs.ext4 -d"
base=$tmp/base.qcow2
qemu-img convert -q -f raw -O qcow2 "$tmp/fs.raw" "$base" || fail "convert base"

# --- the application: large and small files, links, owners, modes ---
app=$tmp/app
mkdir -p "$app/bin" "$app/lib/deep/er" "$app/share/empty" "$app/with space"
head -c $((6 * MiB)) /dev/urandom >"$app/lib/big.so"
head -c $((1 * MiB + 123)) /dev/urandom >"$app/bin/tool"
for i in $(seq 1 60); do head -c $((i * 97)) /dev/urandom >"$app/lib/deep/er/f$i"; done
printf '#!/bin/sh\necho app\n' >"$app/bin/run"
chmod 755 "$app/bin/run" "$app/bin/tool"
chmod 4711 "$app/bin/tool"
echo secret >"$app/with space/conf"
chown 1234:5678 "$app/with space/conf"
chmod 640 "$app/with space/conf"
ln -s ../lib/big.so "$app/bin/link"
ln "$app/lib/big.so" "$app/lib/hard.so"
truncate -s $((4 * MiB)) "$app/lib/sparse"
manifest "$app" >"$tmp/app.m"
manifest "$app" content >"$tmp/app.m.content"

# --- 1. layer create --from DIR ---
layer=$tmp/layer1.qcow2
vctl --json layer create --base "$base" --from "$app" -o "$layer" >"$tmp/out" 2>"$tmp/err" ||
        fail "create --from: $(cat "$tmp/err")"
echo "create --from: $(tr -d '\n ' <"$tmp/out")"
python3 -c 'import json,sys
j = json.load(open(sys.argv[1]))
assert j["ok"] and j["image"] == sys.argv[2] and j["depth"] == 2, j
assert j["backing"] == "base.qcow2" and j["backing_format"] == "qcow2", j
assert j["fstype"] == "ext4" and j["virtual_size"] == 128 << 20, j
# 7 MiB of data (the hard link and the hole cost nothing), plus metadata
assert 7 << 20 < j["disk_usage"] < 12 << 20, j["disk_usage"]' "$tmp/out" "$layer" ||
        fail "create --from: the JSON: $(cat "$tmp/out")"
leftovers "create --from"
qemu-img check -q "$layer" || fail "qemu-img check layer1: $(qemu-img check "$layer" 2>&1)"
qemu-img info --backing-chain --output=json "$layer" >"$tmp/info" || fail "qemu-img info"
python3 -c 'import json,sys
c = json.load(open(sys.argv[1]))
assert [i["filename"] for i in c] == [sys.argv[2], sys.argv[3]], c
assert c[0]["backing-filename"] == "base.qcow2" and c[0]["backing-filename-format"] == "qcow2", c[0]
assert "backing-filename" not in c[1], c[1]' "$tmp/info" "$layer" "$base" ||
        fail "qemu-img info: the chain: $(cat "$tmp/info")"
qemu-img compare -q -f raw -F qcow2 "$tmp/fs.raw" "$base" || fail "the base changed"

vctl layer clone "$layer" -o "$tmp/guest1.qcow2" >/dev/null || fail "clone layer1"
check_clone "layer1's clone" "$tmp/guest1.qcow2" "$tmp/app.m"

# --- 2. layer create --script, over layer1 (a 3-deep chain) ---
cat >"$tmp/install.sh" <<'EOF'
# run by /bin/sh: not executable
set -e
[ "$(pwd)" = "$1" ] || { echo "cwd $(pwd), not $1" >&2; exit 9; }
[ "$VBD_LAYER_ROOT" = "$1" ] || { echo "VBD_LAYER_ROOT $VBD_LAYER_ROOT" >&2; exit 9; }
[ -f "$1/lib/big.so" ] || { echo "layer1 is not under it" >&2; exit 9; }
mkdir -p opt/app2
echo "installed by a script" >opt/app2/README
head -c 300000 /dev/urandom >"$VBD_LAYER_ROOT/opt/app2/data"
rm "$1/lib/deep/er/f1"
chmod 700 opt/app2
# a daemon it leaves behind, its cwd in the mount: create ends it
(sleep 600 &)
EOF
layer2=$tmp/layer2.qcow2
vctl layer create --base "$layer" --script "$tmp/install.sh" -o "$layer2" >"$tmp/out" 2>"$tmp/err" ||
        fail "create --script: $(cat "$tmp/err")"
echo "create --script: $(cat "$tmp/out")"
grep -q "depth 3" "$tmp/out" || fail "create --script: not at depth 3: $(cat "$tmp/out")"
leftovers "create --script"
pgrep -f "sleep 600" >/dev/null && fail "create --script: the script's daemon is still running"
qemu-img check -q "$layer2" || fail "qemu-img check layer2"
[ "$(qemu-img info --backing-chain "$layer2" | grep -c '^backing file:')" = 2 ] ||
        fail "layer2: not a 3-deep chain: $(qemu-img info --backing-chain "$layer2")"
# what the script should have made, from a copy of the tree
cp -a "$app" "$tmp/app2"
mkdir -p "$tmp/app2/opt/app2"
rm "$tmp/app2/lib/deep/er/f1"
vctl layer clone "$layer2" -o "$tmp/guest2.qcow2" >/dev/null || fail "clone layer2"
vctl mount "$tmp/guest2.qcow2" "$mnt" >/dev/null 2>&1 || fail "mount guest2"
cp "$mnt/opt/app2/data" "$tmp/app2/opt/app2/data" 2>/dev/null || fail "no opt/app2/data"
echo "installed by a script" >"$tmp/app2/opt/app2/README"
chmod 700 "$tmp/app2/opt/app2"
vctl umount "$mnt" >/dev/null 2>&1
manifest "$tmp/app2" >"$tmp/app2.m"
manifest "$tmp/app2" content >"$tmp/app2.m.content"
check_clone "layer2's clone" "$tmp/guest2.qcow2" "$tmp/app2.m"
[ "$(stat -c %s "$tmp/app2/opt/app2/data" 2>/dev/null)" = 300000 ] || fail "opt/app2/data: wrong size"
# layer1 did not change under it
qemu-img compare -q "$tmp/guest1.qcow2" "$layer" || fail "layer1 changed"

# an executable script is run as it is (here: bash, by its #!)
printf '#!/bin/bash\n[[ -d $1 ]] && echo exec >"$1/by-exec"\n' >"$tmp/exec.sh"
chmod 755 "$tmp/exec.sh"
vctl layer create --base "$base" --script "$tmp/exec.sh" -o "$tmp/layer3.qcow2" >/dev/null 2>"$tmp/err" ||
        fail "create --script (executable): $(cat "$tmp/err")"
qemu-img convert -q -O raw "$tmp/layer3.qcow2" "$tmp/l3.raw"
[ "$(debugfs -R 'cat /by-exec' "$tmp/l3.raw" 2>/dev/null)" = exec ] || fail "the executable script's file"
leftovers "create --script (executable)"

# --- 3. failures: nothing left behind ---
printf 'echo half >"$1/half"\nexit 3\n' >"$tmp/bad.sh"
must_fail "a failing script" "the script $tmp/bad.sh exited with status 3" "$tmp/bad.qcow2" \
        layer create --base "$base" --script "$tmp/bad.sh" -o "$tmp/bad.qcow2"
must_fail "a missing base" "$tmp/nope.qcow2: No such file or directory" "$tmp/bad.qcow2" \
        layer create --base "$tmp/nope.qcow2" --from "$app" -o "$tmp/bad.qcow2"
must_fail "a missing --from" "$tmp/nodir: No such file" "$tmp/bad.qcow2" \
        layer create --base "$base" --from "$tmp/nodir" -o "$tmp/bad.qcow2"
cp "$tmp/guest1.qcow2" "$tmp/exists.qcow2"
sum=$(sha256sum <"$tmp/exists.qcow2")
must_fail "an existing output" "exists: not overwriting it" "$tmp/none" \
        layer create --base "$base" --from "$app" -o "$tmp/exists.qcow2"
[ "$(sha256sum <"$tmp/exists.qcow2")" = "$sum" ] || fail "the existing output was changed"
must_fail "--from and --script" "layer create --base BASE" "$tmp/bad.qcow2" \
        layer create --base "$base" --from "$app" --script "$tmp/bad.sh" -o "$tmp/bad.qcow2"
vctl layer create --base "$base" -o "$tmp/bad.qcow2" >/dev/null 2>&1
[ $? = 2 ] || fail "no --from/--script: not a usage error"
# a full filesystem: 24 MiB of files into a 16 MiB ext4
truncate -s $((16 * MiB)) "$tmp/small.raw"
mkfs.ext4 -q -F "$tmp/small.raw"
mkdir -p "$tmp/huge"
head -c $((24 * MiB)) /dev/urandom >"$tmp/huge/blob"
must_fail "a full filesystem" "No space left on device" "$tmp/bad.qcow2" \
        layer create --base "$tmp/small.raw" --from "$tmp/huge" -o "$tmp/bad.qcow2"
# a base with no filesystem
truncate -s $((16 * MiB)) "$tmp/blank.raw"
must_fail "a base with no filesystem" "no filesystem found" "$tmp/bad.qcow2" \
        layer create --base "$tmp/blank.raw" --from "$app" -o "$tmp/bad.qcow2"
# SIGTERM while the script runs
printf 'touch "$1/started"\nsleep 60\n' >"$tmp/slow.sh"
"$VBD_CTL" layer create --base "$base" --script "$tmp/slow.sh" -o "$tmp/bad.qcow2" >/dev/null \
        2>"$tmp/err" &
pid=$!
for i in $(seq 200); do
        ls "$tmp"/run/mounts/m-*/root/started >/dev/null 2>&1 && break
        sleep 0.05
done
ls "$tmp"/run/mounts/m-*/root/started >/dev/null 2>&1 || fail "SIGTERM: the script did not start"
kill -TERM $pid
wait $pid
rc=$?
[ $rc != 0 ] || fail "SIGTERM: exited 0"
grep -q "interrupted by SIGTERM: $tmp/bad.qcow2 removed" "$tmp/err" || fail "SIGTERM: $(cat "$tmp/err")"
echo "SIGTERM: exit $rc: $(cat "$tmp/err")"
[ -e "$tmp/bad.qcow2" ] && fail "SIGTERM: the layer is left"
leftovers "SIGTERM"
pgrep -f "sleep 60$" >/dev/null && fail "SIGTERM: the script is still running"

# --- 4. a partitioned base: --partition 2 ---
gpt=$tmp/gpt.raw
truncate -s $((64 * MiB)) "$gpt"
printf 'label: gpt\n,16M,L\n,,L\n' | sfdisk -q "$gpt" || fail "sfdisk"
read -r s1 n1 s2 n2 < <(partx -g -o START,SECTORS "$gpt" | tr '\n' ' ')
mkfs.ext4 -q -F -E offset=$((s1 * 512)) "$gpt" $((n1 / 2))k || fail "mkfs p1"
mkfs.ext4 -q -F -d "$tmp/basefiles" -E offset=$((s2 * 512)) "$gpt" $((n2 / 2))k || fail "mkfs p2"
qemu-img convert -q -f raw -O qcow2 "$gpt" "$tmp/gpt.qcow2"
must_fail "two partitions, no --partition" "choose one with --partition" "$tmp/bad.qcow2" \
        layer create --base "$tmp/gpt.qcow2" --from "$app" -o "$tmp/bad.qcow2"
vctl layer create --base "$tmp/gpt.qcow2" --from "$app" -o "$tmp/gl.qcow2" --partition 2 \
        --fstype ext4 >"$tmp/out" 2>&1 || fail "create --partition 2: $(cat "$tmp/out")"
leftovers "create --partition 2"
vctl layer clone "$tmp/gl.qcow2" -o "$tmp/gg.qcow2" >/dev/null || fail "clone gl"
check_clone "the partitioned layer's clone" "$tmp/gg.qcow2" "$tmp/app.m" 2

finish
