#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""libnbd client for the change tracker's tests (tests/cbt).

    cbt-client.py write URI OFF:LEN[:BYTE] ...
        write LEN bytes of BYTE (default 0x5a) at OFF, each acknowledged
    cbt-client.py dirty URI NAME
        print the extents qemu:dirty-bitmap:NAME marks dirty, "OFF LEN" per
        line (adjacent ones merged)
    cbt-client.py storm URI SEED ACKED
        random writes (4 KiB to 256 KiB, random data), 32 in flight, until
        killed; each acknowledged write's "OFF LEN" is appended to ACKED
    cbt-client.py verify URI NAME SNAP IMG GRAN [ACKED]
        every GRAN-byte block where the files SNAP (the image at checkpoint
        NAME) and IMG differ, and every block an acknowledged write in ACKED
        touched, must be dirty in qemu:dirty-bitmap:NAME; prints the counts,
        exit 1 (listing some misses) otherwise
"""
import os
import random
import sys

import nbd

CTX = "qemu:dirty-bitmap:"


def connect(uri, ctx=None):
    h = nbd.NBD()
    if ctx:
        h.add_meta_context(ctx)
    h.connect_uri(uri)
    return h


def dirty_extents(uri, name):
    ctx = CTX + name
    h = connect(uri, ctx)
    if not h.can_meta_context(ctx):
        sys.exit("the server did not select " + ctx)
    size = h.get_size()
    out = []
    off = 0
    while off < size:
        got = []

        def cb(metacontext, offset, entries, err):
            if metacontext != ctx:
                return 0
            pos = offset
            for i in range(0, len(entries), 2):
                ln, flags = entries[i], entries[i + 1]
                got.append((pos, ln, flags & 1))
                pos += ln
            return 0

        h.block_status(min(size - off, 1 << 30), off, cb)
        if not got:
            sys.exit("empty block status reply at %d" % off)
        for pos, ln, d in got:
            if d:
                if out and out[-1][0] + out[-1][1] == pos:
                    out[-1] = (out[-1][0], out[-1][1] + ln)
                else:
                    out.append((pos, ln))
            off = pos + ln
    h.shutdown()
    return out, size


def cmd_write(uri, specs):
    h = connect(uri)
    for s in specs:
        parts = s.split(":")
        off, ln = int(parts[0], 0), int(parts[1], 0)
        byte = int(parts[2], 0) if len(parts) > 2 else 0x5A
        h.pwrite(bytes([byte]) * ln, off)
    h.flush()
    h.shutdown()


def cmd_storm(uri, seed, acked_path):
    rnd = random.Random(int(seed))
    h = connect(uri)
    size = h.get_size()
    acked = open(acked_path, "a", buffering=1)
    inflight = {}
    while True:
        while len(inflight) < 32:
            ln = 4096 * rnd.choice([1, 1, 1, 2, 4, 16, 64])
            off = rnd.randrange(0, (size - ln) // 4096 + 1) * 4096
            buf = nbd.Buffer.from_bytearray(bytearray(os.urandom(ln)))
            inflight[h.aio_pwrite(buf, off)] = (off, ln, buf)
        h.poll(-1)
        for cookie in list(inflight):
            try:
                if not h.aio_command_completed(cookie):
                    continue
            except nbd.Error:
                del inflight[cookie]
                continue
            off, ln, _ = inflight.pop(cookie)
            acked.write("%d %d\n" % (off, ln))


def cmd_verify(uri, name, snap, img, gran, acked_path=None):
    gran = int(gran)
    ext, size = dirty_extents(uri, name)
    dirty = set()
    for off, ln in ext:
        for b in range(off // gran, (off + ln + gran - 1) // gran):
            dirty.add(b)
    need = set()
    with open(snap, "rb") as a, open(img, "rb") as b:
        blk = 0
        while True:
            x, y = a.read(gran), b.read(gran)
            if not x and not y:
                break
            if x != y:
                need.add(blk)
            blk += 1
    changed = len(need)
    if acked_path and os.path.exists(acked_path):
        for line in open(acked_path):
            f = line.split()
            if len(f) != 2:
                continue  # the last line may be torn by the kill
            off, ln = int(f[0]), int(f[1])
            for bb in range(off // gran, (off + ln + gran - 1) // gran):
                need.add(bb)
    missed = sorted(need - dirty)
    print("blocks: %d changed, %d written, %d dirty, %d missed" %
          (changed, len(need), len(dirty), len(missed)))
    if missed:
        print("missed blocks (first 10): %s" % missed[:10])
        sys.exit(1)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    cmd, uri = sys.argv[1], sys.argv[2]
    if cmd == "write":
        cmd_write(uri, sys.argv[3:])
    elif cmd == "dirty":
        for off, ln in dirty_extents(uri, sys.argv[3])[0]:
            print(off, ln)
    elif cmd == "storm":
        cmd_storm(uri, sys.argv[3], sys.argv[4])
    elif cmd == "verify":
        cmd_verify(uri, *sys.argv[3:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
