#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Checks of vbdd's NBD export through libnbd (the real client library).

    nbd-client.py readonly URI          writes/trim/zero refused with EPERM
    nbd-client.py errors URI            out-of-range, unaligned, oversized, no context
    nbd-client.py simple URI FILE       simple replies only: reads equal FILE
    nbd-client.py exportname URI FILE   non-fixed newstyle (NBD_OPT_EXPORT_NAME)
    nbd-client.py ops URI FILE          FUA write, flush, trim, zero (NO_HOLE), block status

Exits 1 with a message on the first failed check.
"""
import errno
import os
import sys

import nbd

MiB = 1 << 20


def die(msg):
    print("nbd-client.py: FAIL: " + msg, file=sys.stderr)
    sys.exit(1)


def handle(uri, strict=True, structured=True, meta=True, hflags=None):
    h = nbd.NBD()
    if not strict:
        h.set_strict_mode(0)
    h.set_request_structured_replies(structured)
    if meta:
        h.add_meta_context(nbd.CONTEXT_BASE_ALLOCATION)
    if hflags is not None:
        h.set_handshake_flags(hflags)
    h.connect_uri(uri)
    return h


def expect_err(what, err, fn, *args):
    try:
        fn(*args)
    except nbd.Error as e:
        if e.errnum != err:
            die("%s: errno %s (%s), expected %s" % (what, e.errnum, e.string, errno.errorcode[err]))
        return
    die("%s succeeded, expected %s" % (what, errno.errorcode[err]))


def read_file(path, off, n):
    with open(path, "rb") as f:
        f.seek(off)
        return f.read(n)


def extents(h, off, n, flags=0):
    got = []

    def cb(metacontext, offset, entries, err):
        if metacontext == nbd.CONTEXT_BASE_ALLOCATION:
            got.extend(zip(entries[0::2], entries[1::2]))

    h.block_status(n, off, cb, flags)
    return got


def cmd_readonly(uri):
    h = handle(uri, strict=False)
    if not h.is_read_only():
        die("export not read-only")
    if h.can_trim() or h.can_zero() or h.can_fua():
        die("read-only export offers trim/zero/fua")
    expect_err("pwrite", errno.EPERM, h.pwrite, b"x" * 4096, 0)
    expect_err("trim", errno.EPERM, h.trim, 4096, 0)
    expect_err("zero", errno.EPERM, h.zero, 4096, 0)
    # the connection is still good
    if len(h.pread(4096, 0)) != 4096:
        die("read after refused writes")
    h.shutdown()


def cmd_errors(uri):
    h = handle(uri, strict=False)
    size = h.get_size()
    expect_err("read past the end", errno.EINVAL, h.pread, 4096, size - 512)
    expect_err("read at offset 2^63", errno.EINVAL, h.pread, 512, 1 << 63)
    expect_err("unaligned read", errno.EINVAL, h.pread, 100, 1)
    expect_err("read of 33 MiB", errno.EINVAL, h.pread, 33 * MiB, 0)
    expect_err("read of 0 bytes", errno.EINVAL, h.pread, 0, 0)
    if not h.is_read_only():
        expect_err("write past the end", errno.ENOSPC, h.pwrite, b"y" * 1024, size - 512)
        expect_err("unaligned write", errno.EINVAL, h.pwrite, b"y" * 100, 512)
        expect_err("zero past the end", errno.ENOSPC, h.zero, 1024, size - 512)
    expect_err("block status past the end", errno.EINVAL, extents, h, size - 512, 1024)
    h.pread(512, size - 512)  # still connected, last sector readable
    h.shutdown()
    # block status without a negotiated context
    h = handle(uri, strict=False, meta=False)
    expect_err("block status without a context", errno.EINVAL, extents, h, 0, 4096)
    h.shutdown()


def cmd_simple(uri, path):
    h = handle(uri, structured=False, meta=False)
    if h.get_structured_replies_negotiated():
        die("structured replies negotiated")
    size = h.get_size()
    for off, n in ((0, 65536), (size - 4096, 4096), (size // 2, 1 << 20)):
        if h.pread(n, off) != read_file(path, off, n):
            die("simple read at %d differs" % off)
    if not h.is_read_only():
        h.pwrite(b"s" * 4096, 8192)
        h.flush()
        if read_file(path, 8192, 4096) != b"s" * 4096:
            die("simple-reply write not in the file")
    h.shutdown()


def cmd_exportname(uri, path):
    h = handle(uri, meta=False, hflags=0)  # no FIXED_NEWSTYLE, no NO_ZEROES
    if h.get_protocol() != "newstyle":
        die("protocol %s, expected plain newstyle" % h.get_protocol())
    if h.get_size() != os.path.getsize(path):
        die("size %d" % h.get_size())
    if h.pread(4096, 4096) != read_file(path, 4096, 4096):
        die("read after EXPORT_NAME differs")
    h.shutdown()


def cmd_ops(uri, path):
    h = handle(uri)
    bs = 65536
    if h.is_read_only() or not (h.can_fua() and h.can_trim() and h.can_zero() and h.can_flush()):
        die("writable export lacks fua/trim/zero/flush")
    data = os.urandom(4 * bs)
    h.pwrite(data, 0, nbd.CMD_FLAG_FUA)
    if read_file(path, 0, 4 * bs) != data:
        die("FUA write not in the file")
    h.flush()
    if h.pread(4 * bs, 0) != data:
        die("read back")
    # trim punches a hole: the file's blocks go, block status says hole
    h.trim(2 * bs, 0)
    st = extents(h, 0, 4 * bs)
    if not st or st[0][1] & 1 == 0 or st[0][0] < 2 * bs:
        die("after trim, block status %s" % st)
    if read_file(path, 0, 2 * bs) != bytes(2 * bs):
        die("trimmed range does not read as zeroes in the file")
    # zero without NO_HOLE may punch; with NO_HOLE it must stay allocated
    h.zero(bs, 2 * bs, nbd.CMD_FLAG_NO_HOLE)
    if read_file(path, 2 * bs, bs) != bytes(bs):
        die("zeroed range not zero")
    st = extents(h, 2 * bs, bs)
    if st[0][1] & 1:
        die("NO_HOLE zeroing left a hole: %s" % st)
    h.zero(bs, 3 * bs, nbd.CMD_FLAG_FUA)
    if read_file(path, 3 * bs, bs) != bytes(bs):
        die("zero with FUA")
    # REQ_ONE: exactly one extent
    st = extents(h, 0, 4 * bs, nbd.CMD_FLAG_REQ_ONE)
    if len(st) != 1:
        die("REQ_ONE gave %d extents" % len(st))
    # an unaligned trim (libnbd's checks off) trims the whole blocks it covers
    h2 = handle(uri, strict=False)
    h2.pwrite(b"t" * 4096, 3 * bs)
    h2.trim(2000, 3 * bs + 100)
    if read_file(path, 3 * bs, 512) != b"t" * 512 or read_file(path, 3 * bs + 2048, 2048) != b"t" * 2048:
        die("unaligned trim touched partial blocks")
    h2.shutdown()
    # many requests in flight, completed out of order by the server
    bufs = []
    for i in range(128):
        b = nbd.Buffer(4096)
        bufs.append(b)
        h.aio_pread(b, i * 4096)
    while h.aio_in_flight() > 0:
        h.poll(-1)
    h.shutdown()


def main():
    if len(sys.argv) < 3:
        die("usage")
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {"readonly": cmd_readonly, "errors": cmd_errors, "simple": cmd_simple,
          "exportname": cmd_exportname, "ops": cmd_ops}.get(cmd)
    if not fn:
        die("unknown command " + cmd)
    fn(*args)


if __name__ == "__main__":
    main()
