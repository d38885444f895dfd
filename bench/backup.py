#!/usr/bin/python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Incremental backup: vbdd's backup job against rsync and QEMU's own
incremental, on the same change, in the same run.

A 1 GiB image full of data; a full backup of it (and, at the same moment,
the copies rsync and QEMU start from); then 1% of it changed in scattered
4 KiB writes (the same offsets everywhere); then each incremental, the page
cache dropped before each:

  vbdd     vbd-ctl backup --to DIR of an export-only vbdd on cbt:raw (the
           writes came through its NBD export): a qcow2 overlay of the
           changed blocks
  rsync    rsync --inplace --no-whole-file --ignore-times of the image onto the copy made
           at the full backup (what crosses the pipe between rsync's sides
           is what would cross the network)
  qemu     qemu-storage-daemon on a qcow2 copy with a persistent dirty
           bitmap, its NBD export with qemu:dirty-bitmap, read by a libnbd
           client that copies the dirty extents (the way backup tools use it)

For each: wall time, bytes on the wire (rsync's sent + received; the NBD
payload read; vbdd's target writes), bytes read from disk by the processes
doing it (their blkio cgroup, or /proc/PID/io), and the result checked
against the image.  Then the guest's side: 4 KiB write latency (QD1, through
vbdd's NBD export) idle and during a full backup.

    bench/backup.py [--size 1G] [--changes 0.01] [BUILD]

Not a test; the figures go to bench/RESULTS.md by hand.  Needs root (drop
caches, cgroups), rsync, qemu-storage-daemon, python3-libnbd.
"""
import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time

import nbd

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib  # noqa: E402

def drop_caches():
    subprocess.run(["sync"], check=True)
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


class DiskReads:
    """Bytes read from storage (/proc/PID/io read_bytes) by a process and
    its children, sampled every 20 ms from a thread while it runs (a child
    that lives less than that is missed: rsync's live for the whole run)."""

    def __init__(self, pid):
        import threading
        self.root = pid
        self.base = {}
        self.last = {}
        self.stop = False
        self._sample()
        self.base = dict(self.last)
        self.t = threading.Thread(target=self._loop, daemon=True)
        self.t.start()

    def _tree(self):
        pids = [self.root]
        for p in pids:
            try:
                with open("/proc/%d/task/%d/children" % (p, p)) as f:
                    pids += [int(x) for x in f.read().split()]
            except OSError:
                pass
        return pids

    def _sample(self):
        for p in self._tree():
            v = benchlib.proc_io(p, "read_bytes")
            if v is not None:
                self.last[p] = v

    def _loop(self):
        while not self.stop:
            self._sample()
            time.sleep(0.02)

    def read(self):
        self.stop = True
        self.t.join()
        self._sample()
        return sum(v - self.base.get(p, 0) for p, v in self.last.items())


def writes(uri, offsets, seed):
    h = nbd.NBD()
    h.connect_uri(uri)
    rnd = random.Random(seed)
    for off in offsets:
        h.pwrite(rnd.randbytes(4096), off)
    h.flush()
    h.shutdown()


def latency(uri, secs, region, seed):
    """4 KiB writes at QD1 for secs seconds: (count, p50 us, p99 us, max us)."""
    h = nbd.NBD()
    h.connect_uri(uri)
    rnd = random.Random(seed)
    buf = os.urandom(4096)
    lat = []
    end = time.time() + secs
    while time.time() < end:
        off = region[0] + rnd.randrange(0, (region[1] - region[0]) // 4096) * 4096
        t = time.perf_counter()
        h.pwrite(buf, off)
        lat.append((time.perf_counter() - t) * 1e6)
    h.shutdown()
    lat.sort()
    return len(lat), lat[len(lat) // 2], lat[int(len(lat) * 0.99)], lat[-1]


def qemu_copy_dirty(uri, bitmap, out, size):
    """Copy the extents qemu:dirty-bitmap:BITMAP marks into the file out
    (sparse, size bytes): bytes read over NBD."""
    ctx = "qemu:dirty-bitmap:" + bitmap
    h = nbd.NBD()
    h.add_meta_context(ctx)
    h.connect_uri(uri)
    if not h.can_meta_context(ctx):
        benchlib.die("qemu-storage-daemon did not offer " + ctx)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.ftruncate(fd, size)
    got = 0
    off = 0
    while off < size:
        ext = []

        def cb(metacontext, offset, entries, err):
            if metacontext == ctx:
                pos = offset
                for i in range(0, len(entries), 2):
                    ext.append((pos, entries[i], entries[i + 1] & 1))
                    pos += entries[i]
            return 0

        h.block_status(min(size - off, 1 << 30), off, cb)
        for pos, ln, dirty in ext:
            if dirty:
                done = 0
                while done < ln:
                    n = min(ln - done, 4 << 20)
                    data = h.pread(n, pos + done)
                    os.pwrite(fd, data, pos + done)
                    got += n
                    done += n
            off = pos + ln
    os.fsync(fd)
    os.close(fd)
    h.shutdown()
    return got


def qmp_raw(qmp, cmd, args):
    """A QMP command whose arguments include "name" (QMP.cmd's own parameter)."""
    qmp.f.write((json.dumps({"execute": cmd, "arguments": args}) + "\n").encode())
    qmp.f.flush()
    while True:
        m = json.loads(qmp.f.readline())
        if "event" in m:
            continue
        if "error" in m:
            benchlib.die("QMP %s: %s" % (cmd, m["error"].get("desc")))
        return m["return"]


def wait_sock(path, proc, what):
    for _ in range(400):
        if os.path.exists(path):
            return
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    benchlib.die("%s did not start" % what)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G")
    ap.add_argument("--changes", type=float, default=0.01, help="fraction changed (default 0.01)")
    ap.add_argument("--granularity", default="64K",
                    help="tracking and copy granularity, vbdd's and QEMU's (default 64K)")
    ap.add_argument("--dir", default=os.environ.get("VBD_BENCH_DIR", "/var/tmp"))
    ap.add_argument("build", nargs="?", default="build")
    opt = ap.parse_args()
    size = benchlib.parse_size(opt.size)
    gran = benchlib.parse_size(opt.granularity)
    vbdd = os.path.abspath(os.path.join(opt.build, "vbdd"))
    ctl = os.path.abspath(os.path.join(opt.build, "tools/vbd-ctl/vbd-ctl"))
    for t in ("rsync", "qemu-storage-daemon", "qemu-img"):
        if not shutil.which(t):
            benchlib.die("needs " + t)
    work = os.path.join(opt.dir, "vbd-bench-backup")
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    img = os.path.join(work, "disk.img")
    bkdir = os.path.join(work, "chain")
    os.mkdir(bkdir)
    env = dict(os.environ, VBD_VBDD=vbdd)
    procs = []
    try:
        benchlib.fio_fill(img, size)
        nchanges = int(size * opt.changes / 4096)
        offsets = sorted(random.Random(1).sample(range(size // 4096), nchanges))
        offsets = [o * 4096 for o in offsets]
        changed_blocks = len({o // gran for o in offsets})
        print("vbd backup bench: %s, %d cores, load %s; %s" % (
            time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), os.cpu_count(), benchlib.loadavg(),
            os.uname().release))
        print("image %d MiB raw, full of data, in %s; change: %d scattered 4 KiB writes (%.1f%%, "
              "%.1f MiB), %d blocks of %d KiB touched (%.1f MiB after granularity)" % (
                  size >> 20, opt.dir, nchanges, opt.changes * 100, nchanges * 4096 / 2**20,
                  changed_blocks, gran >> 10, changed_blocks * gran / 2**20))

        # vbdd: export-only on cbt:raw, the full backup
        sock = os.path.join(work, "v.sock")
        v = subprocess.Popen([vbdd, "--export-only", "--image",
                              "cbt:raw:%s,cbt.granularity=%d" % (img, gran), "--nbd",
                              "unix:" + sock, "--nbd-writable", "--domid", "9", "--devid", "1",
                              "--ctl-dir", work, "-q"], stderr=open(os.path.join(work, "vbdd.log"), "w"))
        procs.append(v)
        wait_sock(sock, v, "vbdd")
        vuri = "nbd+unix:///?socket=" + sock
        vctl = [ctl, "--ctl-dir", work]

        def backup(args):
            t = time.time()
            r = subprocess.run(vctl + ["backup", "-d", "9", "-n", "1", "--no-progress", "--json"]
                               + args, capture_output=True, text=True, env=env)
            if r.returncode:
                benchlib.die("vbd-ctl backup: " + r.stderr)
            return time.time() - t, json.loads(r.stdout)

        t_full, st = backup(["--to", bkdir, "--granularity", str(gran)])
        print("full backup (vbdd): %.2f s, %d MiB" % (t_full, st["bytes_done"] >> 20))
        # the starting points of the others, the same moment
        rdst = os.path.join(work, "rsync-dest.img")
        subprocess.run(["cp", "--sparse=always", img, rdst], check=True)
        qimg = os.path.join(work, "qemu.qcow2")
        subprocess.run(["qemu-img", "convert", "-U", "-O", "qcow2", "-o", "cluster_size=%d" % gran, img,
                        qimg], check=True)
        qmp_path = os.path.join(work, "qmp.sock")
        qsock = os.path.join(work, "q.sock")
        q = subprocess.Popen(["qemu-storage-daemon",
                              "--blockdev", "file,node-name=f,filename=%s,cache.direct=on,aio=native" % qimg,
                              "--blockdev", "qcow2,node-name=d,file=f",
                              "--nbd-server", "addr.type=unix,addr.path=" + qsock,
                              "--chardev", "socket,id=m,path=%s,server=on,wait=off" % qmp_path,
                              "--monitor", "chardev=m"],
                             stderr=open(os.path.join(work, "qsd.log"), "w"))
        procs.append(q)
        wait_sock(qmp_path, q, "qemu-storage-daemon")
        qmp = benchlib.QMP(qmp_path)
        qmp_raw(qmp, "block-dirty-bitmap-add",
                {"node": "d", "name": "b0", "persistent": True, "granularity": gran})
        qmp.cmd("block-export-add", type="nbd", id="e", **{"node-name": "d"}, writable=True,
                bitmaps=["b0"])
        wait_sock(qsock, q, "qemu-storage-daemon's export")
        quri = "nbd+unix:///d?socket=" + qsock

        # the change, the same bytes on both servers (the image rsync reads is vbdd's)
        writes(vuri, offsets, 2)
        writes(quri, offsets, 2)
        rows = []

        # vbdd incremental
        drop_caches()
        dr = DiskReads(v.pid)
        cpu0 = benchlib.proc_cpu(v.pid)
        t_inc, st = backup(["--to", bkdir])
        cpu = benchlib.proc_cpu(v.pid) - cpu0
        rd = dr.read()
        inc = os.path.join(bkdir, "0002-inc.qcow2")
        ok = subprocess.run(["qemu-img", "compare", "-U", "-q", "-f", "qcow2", "-F", "raw", inc, img]).returncode == 0
        rows.append(("vbdd backup job", t_inc, st["bytes_written"], rd, cpu, ok,
                     "qcow2 overlay %d KiB on disk" % (os.stat(inc).st_blocks // 2)))

        # rsync
        drop_caches()
        t = time.time()
        p = subprocess.Popen(["rsync", "--inplace", "--no-whole-file", "--ignore-times", "--stats", img, rdst],
                             stdout=subprocess.PIPE, text=True)
        dr = DiskReads(p.pid)
        out = p.communicate()[0]
        t_rs = time.time() - t
        rd = dr.read()
        sent = recv = 0
        for line in out.splitlines():
            if line.startswith("Total bytes sent:"):
                sent = int(line.split(":")[1].replace(",", ""))
            if line.startswith("Total bytes received:"):
                recv = int(line.split(":")[1].replace(",", ""))
        ok = subprocess.run(["cmp", "-s", img, rdst]).returncode == 0
        rows.append(("rsync --inplace --no-whole-file", t_rs, sent + recv, rd, None, ok,
                     "sent %d + received %d" % (sent, recv)))

        # qemu: the dirty extents over NBD
        drop_caches()
        dr = DiskReads(q.pid)
        cpu0 = benchlib.proc_cpu(q.pid)
        qout = os.path.join(work, "qemu-inc.raw")
        t = time.time()
        got = qemu_copy_dirty(quri, "b0", qout, size)
        t_q = time.time() - t
        cpu = benchlib.proc_cpu(q.pid) - cpu0
        rd = dr.read()
        rows.append(("qemu-storage-daemon + qemu:dirty-bitmap", t_q, got, rd, cpu, None,
                     "libnbd copy of the dirty extents"))

        print()
        print("%-40s %9s %12s %8s %12s %8s %9s  %s" % ("incremental", "wall s", "wire bytes",
                                                       "x change", "disk read", "CPU s", "correct", ""))
        after_gran = changed_blocks * gran
        for name, t, wire, rd, cpu, ok, note in rows:
            print("%-40s %9.3f %12d %8.2f %12d %8s %9s  %s" % (
                name, t, wire, wire / after_gran, rd, "-" if cpu is None else "%.2f" % cpu,
                "-" if ok is None else ("yes" if ok else "NO"), note))
        print("vbdd / rsync wall time: %.3f; vbdd / qemu: %.2f" % (rows[0][1] / rows[1][1],
                                                                  rows[0][1] / rows[2][1]))

        # the guest's side: write latency idle, and during a full backup
        region = (0, size)
        idle = latency(vuri, 3, region, 5)
        print()
        print("guest 4 KiB writes at QD1 through vbdd's export:")
        print("  idle:                       %6d writes, p50 %6.0f us, p99 %6.0f us, max %6.0f us"
              % idle)
        for i, rate in enumerate([None, "128M"]):
            scratch = os.path.join(work, "scratch%d" % i)
            os.mkdir(scratch)
            p = subprocess.Popen(vctl + ["backup", "-d", "9", "-n", "1", "--to", scratch, "--full",
                                         "--no-progress", "--json"]
                                 + (["--rate", rate] if rate else []), stdout=subprocess.PIPE,
                                 env=env)
            t0 = time.time()
            lat = []
            hh = nbd.NBD()
            hh.connect_uri(vuri)
            rnd = random.Random(7 + i)
            buf = os.urandom(4096)
            while p.poll() is None:  # for as long as the backup runs
                off = rnd.randrange(0, size // 4096) * 4096
                t = time.perf_counter()
                hh.pwrite(buf, off)
                lat.append((time.perf_counter() - t) * 1e6)
            hh.shutdown()
            st = json.loads(p.stdout.read())
            lat.sort()
            print("  full backup, %-13s %6d writes, p50 %6.0f us, p99 %6.0f us, max %6.0f us "
                  "(backup %.1f s, %d writes held, max held %d us)" % (
                      ("--rate " + rate + ":") if rate else "no cap:", len(lat), lat[len(lat) // 2],
                      lat[int(len(lat) * 0.99)], lat[-1], time.time() - t0, st["writes_held"],
                      st["held_max_us"]))
            shutil.rmtree(scratch)
    finally:
        for p in reversed(procs):
            benchlib.stop(p)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
