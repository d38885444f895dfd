#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Storage migration under a writing guest: vbdd's PASM mirror against its
own precopy mode and against qemu-storage-daemon's blockdev-mirror
(copy-mode=write-blocking).  Not a test: prints the figures and ratios;
they go to bench/RESULTS.md by hand.

  bench/migrate.py [OPTIONS] [BUILD_DIR]        (bench/migrate.py --help)
  VBD_BENCH_DIR   where the source and destination images go (default
                  /var/tmp; must support O_DIRECT, so not tmpfs)

Every mode runs the same way, one after the other, on the same source
image (raw, fully written first by fio, so 100% of it is data):
  1. a fresh sparse destination image and its NBD server (the partner);
  2. a guest doing 4 KiB random writes at queue depth 16 over the whole
     disk, for the whole run;
  3. a baseline window (--base-time seconds) without migrating;
  4. the migration, started while the guest writes, until it is ready
     (converged): its time, the guest's IOPS meanwhile, the bytes sent;
     pasm and qsd then stay ready for --ready-time seconds (every write
     forwarded) to measure the guest in that state;
  5. cut-over (its downtime); vbdd modes then compare source and
     destination while the guest is paused (random 1 MiB pieces for at
     most --verify-time seconds; all of a small image), and undo the
     cut-over (migrate-abort: the guest resumes locally);
  6. a second baseline window; the baseline is the mean of the two, so
     that a drift of the machine's load weighs on both sides.
Modes:
  pasm     vbd-sim's simulated guest -> vbdd-sim (ring), migrate-start
           mode=pasm over the control socket to `vbdd --export-only
           --nbd-writable` on a unix socket
  precopy  the same with mode=precopy; it gets 3x the PASM time (at most
           --precopy-max, 90 s, to keep the run short; or --precopy-limit)
           to converge, else "did not converge"
  qsd      fio's nbd engine (the guest) writing to a qemu-storage-daemon
           NBD export of the source; blockdev-mirror sync=full
           copy-mode=write-blocking to a second qemu-storage-daemon
           serving the destination over NBD (unix socket)
  qsdbg    the same with copy-mode=background (qemu's default: guest
           writes are not mirrored synchronously; dirty areas are copied
           again); its ready window is not "every write forwarded"
Links (--link, a comma list runs the modes on each in turn):
  none     the partner on a unix socket on this host (loopback)
  10g, 1g  the partner on an emulated second host: a network namespace
           behind a veth pair shaped with tc tbf to 10 or 1 Gbit/s each way
           (tests/lib/netns.sh; needs root and iproute2; no added latency:
           this kernel has no netem).  The partner (vbdd, or qsd's
           destination qemu-storage-daemon) runs in the namespace with
           `ip netns exec` and listens on TCP at the namespace's address;
           the source migrates to nbd://ADDR:PORT.  "MiB over the link" is
           what the host's end of the veth sent (payload and headers).
CPU: utime+stime from /proc of the source daemon (vbdd-sim; qsd's source
qemu-storage-daemon) and of the partner, each on its own: in % over the
migration, and in microseconds per guest write over the baseline window
and per forwarded write over the ready window (every write forwarded;
vbdd's writes_forwarded, qsd's guest writes, all of which its
write-blocking mirror forwards).
Guest IOPS come from the daemon's own counters: vbdd's "stats" (polled
every 0.2 s) and fio's --status-interval=1 reports.  Bytes sent: the
mirror's counters (vbdd's bytes_sent; qemu's job offset) and, for both,
the bytes the partner process wrote to its image (/proc/PID/io
write_bytes: data it received, O_DIRECT).  The control socket of the
simulated daemon is found through VBD_RUNTIME_DIR, which vbd-sim passes on
to vbdd-sim, and driven with tests/lib/vbdctl.py.  Needs: python3, fio
(with its nbd engine), qemu-storage-daemon (Debian: qemu-system-common).
About 5.5 minutes at the defaults; --size 256M --base-time 3 for a quick
run (about 2 min).
"""
import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
import vbdctl  # noqa: E402
from benchlib import (LINKS, QMP, NetLink, Procs, Series, die, fio_fill,  # noqa: E402
                      fio_has_nbd, fio_series, fmt, loadavg, note, parse_size, proc_cpu,
                      proc_io, ratio, stop)

MODES = ("pasm", "precopy", "qsd", "qsdbg")
# the partner's port, on a link
PORTS = {"pasm": 10809, "precopy": 10810, "qsd": 10811, "qsdbg": 10812}


def parse_options(argv):
    ap = argparse.ArgumentParser(
        prog="bench/migrate.py",
        description="Migration under a writing guest: vbdd PASM vs precopy vs "
        "qemu-storage-daemon blockdev-mirror (write-blocking).")
    ap.add_argument("build", nargs="?", default="build", help="build directory (default: build)")
    ap.add_argument("--size", default="2G", help="image size (default 2G; e.g. 256M for a quick run)")
    ap.add_argument("--modes", default="pasm,precopy,qsd",
                    help="comma list of pasm, precopy, qsd, qsdbg")
    ap.add_argument("--base-time", type=float, default=8,
                    help="baseline windows before and after the migration, s each (default 8)")
    ap.add_argument("--ready-time", type=float, default=3,
                    help="pasm and qsd: stay ready (every write forwarded) this long before the "
                    "cut-over, measuring the guest, s (default 3)")
    ap.add_argument("--warmup", type=float, default=2, help="guest warm-up before the baseline, s")
    ap.add_argument("--limit", type=float, default=300,
                    help="give up on pasm/qsd after this many seconds (default 300)")
    ap.add_argument("--precopy-factor", type=float, default=3,
                    help="precopy time limit = this x the PASM time (default 3)")
    ap.add_argument("--precopy-limit", type=float, default=0,
                    help="precopy time limit in s (default: factor x PASM time, at least 20 s, "
                    "at most --precopy-max; 60 s without a PASM run)")
    ap.add_argument("--precopy-max", type=float, default=90,
                    help="cap of the default precopy limit, s (default 90: keeps the run short)")
    ap.add_argument("--link", default="none",
                    help="the partner's link: none (unix socket), 10g or 1g (a network "
                    "namespace over TCP, shaped); a comma list runs every mode on each "
                    "(default none)")
    ap.add_argument("--bs", type=int, default=4096, help="guest write size (default 4096)")
    ap.add_argument("--iodepth", type=int, default=16, help="guest queue depth (default 16)")
    ap.add_argument("--mig-args", default="{}",
                    help='extra migrate-start args (JSON) for pasm and precopy, e.g. '
                    '\'{"share":50}\'')
    ap.add_argument("--qsd-args", default="{}",
                    help='extra blockdev-mirror args (JSON), e.g. \'{"buf-size":1048576}\'')
    ap.add_argument("--no-verify", action="store_true", help="skip the source/destination compare")
    ap.add_argument("--verify-time", type=float, default=6,
                    help="compare source and destination (guest paused) for at most this long, "
                    "in random 1 MiB pieces, s (default 6; vbd-sim fails requests unanswered "
                    "for 10 s)")
    ap.add_argument("--dst-dir", default="",
                    help="where the destination image goes (default: with the source, i.e. the "
                    "same disk; e.g. /dev/shm to take the partner's disk writes off that disk)")
    ap.add_argument("--timeline", action="store_true",
                    help="print each mode's guest IOPS and copy progress second by second")
    ap.add_argument("--ready-cmd", default="",
                    help="pasm: run this shell command over the ready window, {pid} replaced "
                    "by the source daemon's pid, SIGINT at the window's end; e.g. 'perf "
                    "record -g -e cpu-clock -o /tmp/p.data -p {pid}' or 'strace -c -f -p {pid}' "
                    "(its output in its log, shown; lengthen the window with --ready-time; "
                    "its cost weighs on that run's figures)")
    ap.add_argument("--keep", action="store_true", help="keep the images and the work directory")
    return ap.parse_args(argv)


class Bench:
    """The run's settings (the options, checked) and its files and processes."""

    def __init__(self, opt):
        self.opt = opt
        self.size = parse_size(opt.size)
        if self.size < (16 << 20) or self.size % (1 << 20):
            die("--size must be a multiple of 1 MiB, at least 16M")
        self.modes = [m for m in opt.modes.split(",") if m]
        for m in self.modes:
            if m not in MODES:
                die("--modes: unknown mode '%s'" % m)
        try:
            self.mig_args = json.loads(opt.mig_args)
            self.qsd_args = json.loads(opt.qsd_args)
            assert isinstance(self.mig_args, dict) and isinstance(self.qsd_args, dict)
        except (ValueError, AssertionError):
            die("--mig-args and --qsd-args must be JSON objects")
        self.links = [x for x in opt.link.split(",") if x]
        for x in self.links:
            if x not in LINKS:
                die("--link: unknown link '%s' (none, 10g, 1g)" % x)
        self.link = None  # the NetLink the modes run on, None: unix sockets
        self.link_name = "none"
        b = os.path.abspath(opt.build)
        self.sim = os.path.join(b, "tests/sim/front/vbd-sim")
        self.vbdd_sim = os.path.join(b, "tests/sim/vbdd-sim")
        self.vbdd = os.path.join(b, "vbdd")
        self.bdir = os.environ.get("VBD_BENCH_DIR", "/var/tmp")
        self.src = os.path.join(self.bdir, "vbd-migrate-src.img")
        self.dst = os.path.join(opt.dst_dir or self.bdir, "vbd-migrate-dst.img")
        self.check_tools()
        self.root = tempfile.mkdtemp(prefix="vbd-mbench.", dir="/tmp")  # sun_path: 108 bytes
        self.work = self.root  # the current link's files: root/LINK
        self.procs = Procs(self.work)
        self.dst_direct = self.dst_tmpfs = False  # set by probe_dst()

    def check_tools(self):
        qemu = "qsd" in self.modes or "qsdbg" in self.modes
        for t in ["fio"] + (["qemu-storage-daemon"] if qemu else []):
            if not shutil.which(t):
                die("%s is needed" % t)
        if qemu and not fio_has_nbd():
            die("fio has no nbd engine (Debian's fio has it)")
        if set(self.modes) & {"pasm", "precopy"}:
            for p in (self.sim, self.vbdd_sim, self.vbdd):
                if not os.access(p, os.X_OK):
                    die("build first (%s missing)" % p)

    def fresh_dst(self):
        """An empty sparse destination image of the source's size."""
        if os.path.exists(self.dst):
            os.unlink(self.dst)
        with open(self.dst, "wb") as f:
            f.truncate(self.size)

    def probe_dst(self):
        """Whether the destination's file system takes O_DIRECT and is tmpfs."""
        self.fresh_dst()
        try:
            os.close(os.open(self.dst, os.O_RDWR | os.O_DIRECT))
            self.dst_direct = True
        except OSError:
            self.dst_direct = False
        self.dst_tmpfs = subprocess.run(["stat", "-f", "-c", "%T", self.dst], capture_output=True,
                                        text=True).stdout.strip() == "tmpfs"

    def partner_io(self, pid):
        """Bytes the partner wrote to its image; None where the kernel does not
        count them (tmpfs has no block I/O)."""
        return proc_io(pid) if not self.dst_tmpfs else None

    def link_up(self, name):
        """Run the next modes on link name (taking the previous one down)."""
        self.link_down()
        self.link_name = name
        self.work = self.procs.workdir = os.path.join(self.root, name)
        os.mkdir(self.work)
        if LINKS[name]:
            self.link = NetLink("vbdb%d" % os.getpid(), LINKS[name])
            note("link %s: partner host %s in namespace %s, %s each way" % (
                name, self.link.ns_addr, self.link.ns, self.link.rate))

    def link_down(self):
        if self.link:
            self.link.down()
            self.link = None

    def link_bytes(self):
        """What the host sent over the link so far; None without one."""
        return self.link.counter() if self.link else None

    def cleanup(self):
        self.procs.stop_all()
        self.link_down()
        if self.opt.keep:
            note("kept %s, %s, %s" % (self.root, self.src, self.dst))
            return
        shutil.rmtree(self.root, ignore_errors=True)
        for f in (self.src, self.dst):
            try:
                os.unlink(f)
            except OSError:
                pass


# ---------------------------------------------------------------------------
# What every mode measures


class StatsSampler(threading.Thread):
    """Polls vbdd's "stats" (write requests completed) every 0.2 s."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.ctl = vbdctl.Client(path, timeout=30)
        self.series = Series()
        self.halt = threading.Event()
        self.error = None

    def sample(self):
        st = self.ctl.call("stats")
        self.series.add(time.time(), st["ops"]["write"]["requests"])

    def run(self):
        try:
            while not self.halt.is_set():
                self.sample()
                self.halt.wait(0.2)
            self.sample()
        except Exception as e:  # reported by the caller
            self.error = e

    def stop(self):
        self.halt.set()
        self.join(40)
        self.ctl.close()


def guest_figures(r, s, bs, tb, tm, ta):
    """The guest's rates from its write series s: the baseline over the
    window before the migration (tb) and the one after it (ta, cut-over
    undone, nothing mirrored), averaged so that a drift in the machine's load
    over the run weighs on both sides; and during the migration (tm)."""
    (tb0, tb1), (t0, t1), (ta0, ta1) = tb, tm, ta
    r["base_before_iops"] = s.rate(tb0, tb1)
    r["base_after_iops"] = s.rate(ta0, ta1)
    r["base_iops"] = ((s.at(tb1) - s.at(tb0)) + (s.at(ta1) - s.at(ta0))) / (
        (tb1 - tb0) + (ta1 - ta0))
    r["mig_iops"] = s.rate(t0, t1)
    r["worst_1s_iops"] = s.worst(t0, t1)
    r["guest_bytes_during"] = int((s.at(t1) - s.at(t0)) * bs) if s.pts else None


def cpu_figures(r, partner0, src0, partner1, src1, secs):
    """CPU of the partner and the source daemon over the migration, %."""
    r["partner_cpu_pct"] = 100 * (partner1 - partner0) / secs
    r["src_cpu_pct"] = 100 * (src1 - src0) / secs


def cpus(*pids):
    """utime+stime of each pid, s."""
    return [proc_cpu(p) for p in pids]


def cpu_window(secs, src_pid, partner_pid):
    """window(secs), and the CPU the source and the partner spent in it, s."""
    a = cpus(src_pid, partner_pid)
    w = window(secs)
    b = cpus(src_pid, partner_pid)
    return w, [y - x if x is not None and y is not None else None for x, y in zip(a, b)]


def per_write(r, s, tb, ready):
    """CPU per write: the source's per guest write over the baseline window
    tb; the source's and the partner's per forwarded write over the ready
    window (r["ready_forwarded"] writes), microseconds."""
    n = s.at(tb[1]) - s.at(tb[0]) if s.pts else 0
    if n > 0 and r.get("base_src_cpu_s") is not None:
        r["base_src_us_per_write"] = 1e6 * r["base_src_cpu_s"] / n
    f = r.get("ready_forwarded")
    if ready and f:
        for who in ("src", "partner"):
            if r.get("ready_%s_cpu_s" % who) is not None:
                r["ready_%s_us_per_fwd" % who] = 1e6 * r["ready_%s_cpu_s" % who] / f


def window(secs):
    """Sleep secs; the (start, end) wall-clock times."""
    t = time.time()
    time.sleep(secs)
    return t, time.time()


def verify(bench, budget):
    """Compare source and destination 1 MiB at a time, in random order, for at
    most budget seconds (the guest is paused meanwhile, and vbd-sim gives up
    on requests unanswered for 10 s).  (equal, fraction compared, seconds)."""
    t = time.time()
    chunk = 1 << 20
    order = list(range(bench.size // chunk))
    random.shuffle(order)
    done = 0
    fa, fb = os.open(bench.src, os.O_RDONLY), os.open(bench.dst, os.O_RDONLY)
    try:
        for i in order:
            if time.time() - t > budget:
                break
            if os.pread(fa, chunk, i * chunk) != os.pread(fb, chunk, i * chunk):
                return False, (done + 1) / len(order), time.time() - t
            done += 1
    finally:
        os.close(fa)
        os.close(fb)
    return True, done / len(order), time.time() - t


def timeline(bench, mode, series, prog, tb0, t0, t1):
    """--timeline: guest IOPS and copy progress per second, from the baseline
    to a few seconds after ready."""
    if not bench.opt.timeline:
        return
    print("timeline %s: t(s, 0 = migration start) guest-write-IOPS progress" % mode,
          file=sys.stderr)
    t = t0 - int(t0 - tb0)
    while t + 1 <= min(t1 + bench.opt.ready_time, series.pts[-1][0]) + 1e-9:
        p = [v for (u, v) in prog if u <= t + 1]
        print("timeline %s %6.0f %7s %5s" % (
            mode, t - t0, fmt(series.rate(t, t + 1)),
            "%.0f%%" % (100 * p[-1]) if p and t + 1 > t0 else "-"), file=sys.stderr)
        t += 1


def progress(mode, t0, last, msg):
    """A note every 10 s while a migration runs."""
    if time.time() - last[0] >= 10:
        last[0] = time.time()
        note("%s: %.0f s, %s" % (mode, time.time() - t0, msg))


# ---------------------------------------------------------------------------
# vbdd modes


def start_vbd(bench, mode):
    """The partner and the guest of a vbdd mode: (partner, its NBD URI, guest,
    its JSON output file, the source daemon's control socket)."""
    procs = bench.procs
    psock = os.path.join(bench.work, "partner-%s.sock" % mode)
    spec = "raw:%s,direct=%s" % (bench.dst, "on" if bench.dst_direct else "off")
    argv = [bench.vbdd, "--export-only", "--image", spec, "--nbd-writable", "-q", "--nbd"]
    if bench.link:
        port = PORTS[mode]
        partner = procs.spawn("partner-" + mode, bench.link.argv(
            argv + ["tcp:%s:%d" % (bench.link.ns_addr, port), "--nbd-insecure"]))
        bench.link.wait_tcp(port, partner, "partner-" + mode, procs)
        uri = "nbd://%s:%d" % (bench.link.ns_addr, port)
    else:
        partner = procs.spawn("partner-" + mode, argv + ["unix:" + psock])
        procs.wait_sock(psock, partner, "partner-" + mode)
        uri = "nbd+unix:///?socket=" + psock
    rtdir = os.path.join(bench.work, "run-" + mode)
    os.mkdir(rtdir, 0o700)
    env = dict(os.environ, VBD_SIM_VBDD=bench.vbdd_sim, VBD_RUNTIME_DIR=rtdir)
    gout = os.path.join(bench.work, "guest-%s.json" % mode)
    guest = procs.spawn("guest-" + mode,
                        [bench.sim, "bench", "--image", "raw:" + bench.src, "--rw", "randwrite",
                         "--bs", str(bench.opt.bs), "--iodepth", str(bench.opt.iodepth),
                         "--runtime", "100000", "--json"], out=gout, env=env)
    csock = vbdctl.socket_path(1, 51712, rtdir)
    procs.wait_sock(csock, guest, "guest-" + mode)
    return partner, uri, guest, gout, csock


def migrate(bench, ctl, mode, args, limit, r):
    """migrate-start, then poll until ready, a final state or limit seconds;
    r gets converged (and error).  The last status and the progress series."""
    t0 = time.time()
    last = [t0]
    prog = []

    def each(st):  # every status; a note only for those that do not end the wait
        now = time.time()
        prog.append((now, st.get("bytes_synced", 0) / bench.size))
        if st["state"] != "ready" and st["state"] not in vbdctl.FINAL_STATES \
                and now - t0 <= limit:
            progress(mode, t0, last, "%s, progress %.0f%%, passes %s, dirty %s MiB" % (
                st["state"], 100 * st.get("progress", 0), st.get("passes"),
                st.get("dirty_bytes", 0) >> 20))

    ctl.call("migrate-start", args)
    try:
        st = ctl.wait_state("ready", limit - (time.time() - t0), each=each)
        r["converged"] = True
    except vbdctl.MigrationEnded as e:
        st = e.status
        r["error"] = "state %s: %s" % (st["state"], st.get("error", ""))
    except vbdctl.CtlTimeout as e:
        if e.last is None:  # no reply at all, not the limit
            raise
        st = e.last
    return st, prog


def cutover(ctl, r):
    """migrate-cutover, again while EAGAIN (a write made a region unsent
    again) for up to 30 s; its figures into r."""
    end = time.time() + 30
    while True:
        tc = time.time()
        try:
            cut = ctl.call("migrate-cutover")
            break
        except vbdctl.CommandError as e:
            if e.code != "EAGAIN" or time.time() > end:
                raise
            time.sleep(0.05)
    r["cutover_call_ms"] = (time.time() - tc) * 1000
    r["downtime_ms"] = cut.get("downtime_ms")
    r["state"] = cut["state"]
    for k in ("bytes_sent", "bytes_copied", "bytes_forwarded", "writes_forwarded"):
        r[k + "_at_cutover"] = cut.get(k)


def run_vbd(bench, mode, limit):
    opt = bench.opt
    r = {"mode": mode, "size": bench.size, "load_before": loadavg(), "converged": False}
    bench.fresh_dst()
    partner, uri, guest, gout, csock = start_vbd(bench, mode)
    ctl = vbdctl.Client(csock, timeout=120)
    src_pid = ctl.call("info")["pid"]
    sampler = StatsSampler(csock)
    sampler.start()
    end = time.time() + 30
    while not (sampler.series.pts and sampler.series.pts[-1][1] > 0):
        if time.time() > end or guest.poll() is not None:
            raise RuntimeError("the guest does not write\n" + bench.procs.log_tail("guest-" + mode))
        time.sleep(0.1)
    time.sleep(opt.warmup)
    tb, (r["base_src_cpu_s"], _) = cpu_window(opt.base_time, src_pid, partner.pid)
    wb0, pc0, sc0 = bench.partner_io(partner.pid), proc_cpu(partner.pid), proc_cpu(src_pid)
    lb0 = bench.link_bytes()
    t0 = time.time()
    st, prog = migrate(bench, ctl, mode, dict(bench.mig_args, to=uri, mode=mode), limit, r)
    t1 = time.time()
    wb1, pc1, sc1 = bench.partner_io(partner.pid), proc_cpu(partner.pid), proc_cpu(src_pid)
    lb1 = bench.link_bytes()
    r["link_bytes"] = lb1 - lb0 if lb0 is not None else None
    r.update(time_s=t1 - t0, limit_s=limit, base_window_s=tb[1] - tb[0], state=st["state"])
    for k in ("bytes_sent", "bytes_copied", "bytes_zeroed", "bytes_forwarded",
              "writes_forwarded", "writes_waited", "passes", "dirty_bytes", "region_size",
              "bytes_synced"):
        r[k] = st.get(k)
    ready = None
    if r["converged"] and mode == "pasm" and opt.ready_time > 0:
        prof = None
        if opt.ready_cmd:
            prof = bench.procs.spawn("ready-cmd", ["sh", "-c", "exec " + opt.ready_cmd.replace(
                "{pid}", str(src_pid))])
            time.sleep(0.5)
        f0 = ctl.call("migrate-status")["writes_forwarded"]
        ready, (r["ready_src_cpu_s"], r["ready_partner_cpu_s"]) = cpu_window(
            opt.ready_time, src_pid, partner.pid)
        r["ready_forwarded"] = ctl.call("migrate-status")["writes_forwarded"] - f0
        if prof:
            stop(prof, signal.SIGINT, 60)
            note("--ready-cmd exited %s:\n%s" % (prof.returncode,
                                                 bench.procs.log_tail("ready-cmd", 40)))
    if r["converged"]:
        cutover(ctl, r)
        r["partner_wrote_at_cutover"] = (
            bench.partner_io(partner.pid) - wb0 if wb0 is not None else None)
        if not opt.no_verify:
            r["verified"], r["verified_fraction"], r["verify_s"] = verify(bench, opt.verify_time)
    try:
        ctl.call("migrate-abort")  # after cut-over: resume the VBD locally
    except vbdctl.CommandError as e:
        if e.code != "ENOENT":
            raise
    # The second baseline window: the guest again without a migration.
    time.sleep(1)
    ta = window(opt.base_time)
    sampler.stop()
    if sampler.error:
        raise RuntimeError("stats sampler: %s" % sampler.error)
    s = sampler.series
    r["partner_wrote"] = wb1 - wb0 if wb0 is not None and wb1 is not None else None
    cpu_figures(r, pc0, sc0, pc1, sc1, t1 - t0)
    guest_figures(r, s, opt.bs, tb, (t0, t1), ta)
    if ready:
        r["ready_iops"] = s.rate(*ready)
    per_write(r, s, tb, ready)
    timeline(bench, mode, s, prog, tb[0], t0, t1)
    ctl.close()
    stop(guest, signal.SIGINT, 60)
    try:
        with open(gout) as f:
            g = json.loads(f.read().strip().splitlines()[-1])
        r["guest_errors"] = g["errors"]
    except (OSError, ValueError, IndexError, KeyError):
        r["guest_errors"] = None
        note("%s: no result from the guest (exit %s)\n%s" % (
            mode, guest.returncode, bench.procs.log_tail("guest-" + mode)))
    if guest.returncode != 0:
        r["guest_exit"] = guest.returncode
    r["partner_exit"] = stop(partner)
    r["load_after"] = loadavg()
    return r


# ---------------------------------------------------------------------------
# qemu-storage-daemon


def qsd(bench, name, img, node, direct=True, port=None):
    """A qemu-storage-daemon serving img as NBD export node, writable:
    (process, NBD socket, QMP).  With port, on the link's partner host,
    NBD on TCP there at that port (the socket is then None)."""
    sock = os.path.join(bench.work, name + ".sock")
    qmp = os.path.join(bench.work, name + ".qmp")
    server = ("addr.type=inet,addr.host=%s,addr.port=%d" % (bench.link.ns_addr, port)
              if port else "addr.type=unix,addr.path=" + sock)
    argv = [
        "qemu-storage-daemon",
        "--blockdev", "driver=file,node-name=f0,filename=%s,%s" % (
            img, "cache.direct=on,aio=native" if direct else "aio=threads"),
        "--blockdev", "driver=raw,node-name=%s,file=f0" % node,
        "--nbd-server", server,
        "--export", "type=nbd,id=e0,node-name=%s,name=%s,writable=on" % (node, node),
        "--chardev", "socket,id=qmp,path=%s,server=on,wait=off" % qmp,
        "--monitor", "chardev=qmp"]
    p = bench.procs.spawn(name, bench.link.argv(argv) if port else argv)
    bench.procs.wait_sock(qmp, p, name)
    if port:
        bench.link.wait_tcp(port, p, name, bench.procs)
        return p, None, QMP(qmp)
    bench.procs.wait_sock(sock, p, name)
    return p, sock, QMP(qmp)


def qsd_mirror(bench, q, limit, r, copy_mode="write-blocking"):
    """blockdev-mirror to the node "tgt", polled until BLOCK_JOB_READY, an
    error or limit seconds; r gets converged (and error).  (the job as last
    queried, the progress series)."""
    t0 = time.time()
    q.cmd("blockdev-mirror", **dict({"job-id": "m0", "device": "src", "target": "tgt",
                                     "sync": "full", "copy-mode": copy_mode},
                                    **bench.qsd_args))
    last = [t0]
    job = {}
    prog = []
    while True:
        jobs = q.cmd("query-block-jobs")
        job = jobs[0] if jobs else job
        if job:
            prog.append((time.time(), job["offset"] / max(job["len"], 1)))
        if q.event("BLOCK_JOB_READY"):
            r["converged"] = True
            break
        bad = q.event("BLOCK_JOB_ERROR") or q.event("BLOCK_JOB_COMPLETED")
        if bad or not jobs:
            r["error"] = json.dumps(bad["data"] if bad else "the job disappeared")
            break
        if time.time() - t0 > limit:
            break
        progress("qsd", t0, last, "offset %d MiB of %d MiB" % (job["offset"] >> 20,
                                                                job["len"] >> 20))
        time.sleep(0.05)
    return job, prog


def start_fio_guest(bench, ssock):
    """fio's nbd engine writing to the source export; (process, its output)."""
    opt = bench.opt
    fout = os.path.join(bench.work, "fio-qsd.json")
    guest = bench.procs.spawn("fio-qsd", [
        "fio", "--name=guest", "--ioengine=nbd", "--uri=nbd+unix:///src?socket=" + ssock,
        "--rw=randwrite", "--bs=%d" % opt.bs, "--iodepth=%d" % opt.iodepth,
        "--size=%d" % bench.size, "--time_based", "--runtime=100000", "--norandommap",
        "--randrepeat=0", "--status-interval=1", "--output-format=json"], out=fout)
    end = time.time() + 30
    while True:
        s, _ = fio_series(fout)
        if s.pts and s.pts[-1][1] > 0:
            return guest, fout
        if time.time() > end or guest.poll() is not None:
            raise RuntimeError("fio does not write\n" + bench.procs.log_tail("fio-qsd"))
        time.sleep(0.2)


def run_qsd(bench, limit, mode="qsd"):
    opt = bench.opt
    r = {"mode": mode, "size": bench.size, "load_before": loadavg(), "converged": False}
    bench.fresh_dst()
    port = PORTS[mode] if bench.link else None
    tgt, tsock, tq = qsd(bench, "qsd-dst", bench.dst, "dst", bench.dst_direct, port)
    src, ssock, q = qsd(bench, "qsd-src", bench.src, "src")
    guest, fout = start_fio_guest(bench, ssock)
    time.sleep(opt.warmup)
    tb, (r["base_src_cpu_s"], _) = cpu_window(opt.base_time, src.pid, tgt.pid)
    server = ({"type": "inet", "host": bench.link.ns_addr, "port": str(port)} if port
              else {"type": "unix", "path": tsock})
    q.cmd("blockdev-add", driver="nbd", **{"node-name": "tgt"}, server=server, export="dst")
    wb0, pc0, sc0 = bench.partner_io(tgt.pid), proc_cpu(tgt.pid), proc_cpu(src.pid)
    lb0 = bench.link_bytes()
    t0 = time.time()
    job, prog = qsd_mirror(bench, q, limit, r,
                           "background" if mode == "qsdbg" else "write-blocking")
    t1 = time.time()
    wb1, pc1, sc1 = bench.partner_io(tgt.pid), proc_cpu(tgt.pid), proc_cpu(src.pid)
    lb1 = bench.link_bytes()
    r["link_bytes"] = lb1 - lb0 if lb0 is not None else None
    r.update(time_s=t1 - t0, limit_s=limit, base_window_s=tb[1] - tb[0],
             job_offset=job.get("offset"), job_len=job.get("len"))
    if r["converged"]:
        ev = q.event("BLOCK_JOB_READY")
        r["job_offset"], r["job_len"] = ev["data"]["offset"], ev["data"]["len"]
    ready = None
    if r["converged"] and opt.ready_time > 0:
        ready, (r["ready_src_cpu_s"], r["ready_partner_cpu_s"]) = cpu_window(
            opt.ready_time, src.pid, tgt.pid)
    # Cut-over: cancelling a ready mirror completes it without a pivot; the
    # target then holds everything written up to that point.
    tc = time.time()
    q.cmd("block-job-cancel", device="m0", force=not r["converged"])
    while not q.event("BLOCK_JOB_COMPLETED") and not q.event("BLOCK_JOB_CANCELLED"):
        q.cmd("query-block-jobs")
        time.sleep(0.005)
    if r["converged"]:
        r["downtime_ms"] = (time.time() - tc) * 1000
        done = q.event("BLOCK_JOB_COMPLETED")
        r["job_offset_at_cutover"] = done["data"]["offset"] if done else None
        r["partner_wrote_at_cutover"] = (
            bench.partner_io(tgt.pid) - wb0 if wb0 is not None else None)
    time.sleep(1)
    ta = window(opt.base_time)
    stop(guest, signal.SIGINT, 60)
    s, fin = fio_series(fout)
    r["partner_wrote"] = wb1 - wb0 if wb0 is not None and wb1 is not None else None
    cpu_figures(r, pc0, sc0, pc1, sc1, t1 - t0)
    guest_figures(r, s, opt.bs, tb, (t0, t1), ta)
    if ready:
        r["ready_iops"] = s.rate(*ready)
        # write-blocking: every guest write is mirrored (background: not
        # synchronously; the figure is per guest write all the same)
        r["ready_forwarded"] = s.at(ready[1]) - s.at(ready[0])
    per_write(r, s, tb, ready)
    timeline(bench, mode, s, prog, tb[0], t0, t1)
    r["bytes_sent"] = r["job_offset"]
    r["guest_errors"] = fin["jobs"][0]["error"] if fin else None
    q.cmd("quit")
    tq.cmd("quit")
    r["partner_exit"] = stop(tgt)
    stop(src)
    r["load_after"] = loadavg()
    return r


# ---------------------------------------------------------------------------
# report


def table(bench, results):
    """The figures, one column per mode."""
    size = bench.size
    w = 16
    print("%-40s" % "" + "".join("%*s" % (w, r["mode"]) for r in results))

    def row(label, fn):
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        print("%-40s" % label + "".join("%*s" % (w, c) for c in cells))

    def precopy_only(fn):
        return lambda r: "-" if r["mode"] != "precopy" else fn(r)

    def vbdd_only(fn):
        return lambda r: "-" if r["mode"] in ("qsd", "qsdbg") else fn(r)

    row("converged (ready)", lambda r: "yes" if r["converged"] else
        ("NO (%s)" % r["state"] if r.get("error") else "NO, %.0fs limit" % r["limit_s"]))
    row("migration time, start -> ready (s)", lambda r: ("%.1f" if r["converged"] else ">%.0f")
        % r["time_s"])
    row("cutover downtime (ms)", lambda r: fmt(r.get("downtime_ms"), "%.0f"))
    row("destination == source after cutover", lambda r: "-" if "verified" not in r else
        ("yes (%.0f%%)" % (100 * r["verified_fraction"]) if r["verified"] else "NO"))
    row("guest write IOPS, baseline before/after", lambda r: "%.0f/%.0f" % (
        r["base_before_iops"], r["base_after_iops"]))
    row("guest write IOPS, baseline (mean)", lambda r: fmt(r["base_iops"]))
    row("guest write IOPS, during migration", lambda r: fmt(r["mig_iops"]))
    row("guest iops ratio (migrating/baseline)", lambda r: ratio(r["mig_iops"], r["base_iops"]))
    row("guest IOPS ratio while ready (%.0f s)" % bench.opt.ready_time,
        lambda r: ratio(r["ready_iops"], r["base_iops"]))
    row("guest worst 1 s / baseline", lambda r: ratio(r["worst_1s_iops"], r["base_iops"]))
    row("guest MiB written during migration", lambda r: "%.0f" % (r["guest_bytes_during"] / 2**20))
    row("MiB sent (mirror's count)", lambda r: "%.0f" % (r["bytes_sent"] / 2**20))
    row("  of which copied / forwarded (MiB)", vbdd_only(lambda r: "%.0f / %.0f" % (
        r["bytes_copied"] / 2**20, r["bytes_forwarded"] / 2**20)))
    row("MiB the partner wrote", lambda r: "%.0f" % (r["partner_wrote"] / 2**20))
    row("bytes sent / image size", lambda r: ratio(r["bytes_sent"], size))
    row("bytes sent / (size + forwarded)", vbdd_only(lambda r: ratio(
        r["bytes_sent"], size + r["bytes_forwarded"])))
    row("bytes sent / (size + guest writes)", lambda r: ratio(r["bytes_sent"],
                                                              size + r["guest_bytes_during"]))
    row("partner wrote / image size", lambda r: ratio(r["partner_wrote"], size))
    row("precopy passes done", precopy_only(lambda r: str(r["passes"])))
    row("precopy MiB re-dirtied (cumulative)", precopy_only(lambda r: "%.0f" % (
        r["dirty_bytes"] / 2**20)))
    row("precopy MiB unsent at the end", precopy_only(lambda r: "%.0f" % (
        (size - r["bytes_synced"]) / 2**20)))
    row("guest writes that waited (vbdd)", lambda r: fmt(r.get("writes_waited")))
    row("MiB over the link (veth, host -> partner)", lambda r: "%.0f" % (r["link_bytes"] / 2**20))
    row("source daemon CPU % (migrating)", lambda r: fmt(r["src_cpu_pct"]))
    row("partner CPU % (migrating)", lambda r: fmt(r["partner_cpu_pct"]))
    row("source CPU us per guest write (baseline)", lambda r: fmt(r["base_src_us_per_write"],
                                                                  "%.1f"))
    row("source CPU us per forwarded write (ready)", lambda r: fmt(r["ready_src_us_per_fwd"],
                                                                   "%.1f"))
    row("partner CPU us per forwarded write (ready)",
        lambda r: fmt(r["ready_partner_us_per_fwd"], "%.1f"))
    row("guest errors", lambda r: "exit %s" % r["guest_exit"] if r.get("guest_exit") else
        str(r["guest_errors"]))
    row("load before / after", lambda r: "%s/%s" % (r["load_before"].split()[0],
                                                     r["load_after"].split()[0]))


def ratios(bench, res):
    """PASM against the other modes, and whether PASM met its targets."""
    by = {r["mode"]: r for r in res}
    p = by.get("pasm")
    if not p:
        return
    print()
    for peer in ("precopy", "qsd", "qsdbg"):
        o = by.get(peer)
        if not o:
            continue
        if p["converged"] and o["converged"]:
            t = "%.2f" % (p["time_s"] / o["time_s"])
        elif p["converged"]:
            t = "<%.2f (%s did not converge in %.0f s)" % (p["time_s"] / o["time_s"], peer,
                                                           o["time_s"])
        else:
            t = "- (pasm did not converge)"
        print("pasm/%-8s time %s" % (peer, t))
        pr = p["mig_iops"] / p["base_iops"] if p["base_iops"] else None
        orr = o["mig_iops"] / o["base_iops"] if o["base_iops"] else None
        print("pasm/%-8s guest iops ratio %s (%s vs %s)" % (
            peer, ratio(pr, orr), fmt(pr, "%.2f"), fmt(orr, "%.2f")))
        print("pasm/%-8s bytes sent %s" % (peer, ratio(p["bytes_sent"], o["bytes_sent"])))
    print()
    ok = []
    gi = p["mig_iops"] / p["base_iops"] if p["base_iops"] else 0
    ok.append(("guest keeps >= 0.9x its IOPS", gi >= 0.9, "%.2f" % gi))
    lim = 1.1 * bench.size + (p["bytes_forwarded"] or 0)
    ok.append(("bytes sent <= 1.1x size + forwarded", p["bytes_sent"] is not None and
               p["bytes_sent"] <= lim, "%.3f" % (p["bytes_sent"] / (bench.size +
                                                                    p["bytes_forwarded"]))
               if p["bytes_sent"] is not None else "-"))
    ok.append(("converges", p["converged"] and p.get("verified", True) is not False,
               "%.1f s" % p["time_s"]))
    ok.append(("guest I/O without errors", p.get("guest_errors") == 0 and not p.get("guest_exit"),
               "errors %s, exit %s" % (p.get("guest_errors"), p.get("guest_exit", 0))))
    for what, good, val in ok:
        print("target: %-38s %-5s (%s)" % (what, "met" if good else "NOT met", val))


# ---------------------------------------------------------------------------


def header(bench):
    opt = bench.opt
    print("vbd migrate bench: %s, %d cores, load %s; %s" % (
        time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), os.cpu_count(), loadavg(),
        os.uname().release))
    print("image %d MiB raw, 100%% written (fio, 1M sequential), in %s; guest: %d-byte "
          "random writes at QD%d (vbd-sim through the ring for pasm/precopy, fio's nbd engine "
          "for qsd); baseline: %.0f s before + %.0f s after each migration" % (
              bench.size >> 20, bench.bdir, opt.bs, opt.iodepth, opt.base_time, opt.base_time))
    if bench.dst != os.path.join(bench.bdir, "vbd-migrate-dst.img"):
        print("destination image in %s (%s%s)" % (
            os.path.dirname(bench.dst),
            "O_DIRECT" if bench.dst_direct else "no O_DIRECT: page cache",
            ", tmpfs" if bench.dst_tmpfs else ""))


def run_mode(bench, m, pasm_time):
    """One mode's results, None if it failed (said so)."""
    opt = bench.opt
    note("%s: starting (load %s)" % (m, loadavg()))
    try:
        if m in ("qsd", "qsdbg"):
            r = run_qsd(bench, opt.limit, m)
        elif m == "pasm":
            r = run_vbd(bench, "pasm", opt.limit)
        else:
            lim = opt.precopy_limit or (
                min(opt.precopy_max, max(20, opt.precopy_factor * pasm_time))
                if pasm_time else 60)
            r = run_vbd(bench, "precopy", lim)
    except (RuntimeError, OSError, vbdctl.CtlError) as e:
        note("%s failed: %s" % (m, e))
        return None
    finally:
        bench.procs.stop_all()
    note("%s: done in %.1f s, %s" % (m, r["time_s"],
                                     "converged" if r["converged"] else "not converged"))
    return r


def main(argv):
    # a SIGTERM unwinds (the finally below takes the link down)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    bench = Bench(parse_options(argv))
    try:
        bench.probe_dst()
        header(bench)
        fio_fill(bench.src, bench.size)
        ran = False
        for link in bench.links:
            try:
                bench.link_up(link)
            except RuntimeError as e:
                die("link %s: %s" % (link, e))
            res = []
            pasm_time = None
            for m in bench.modes:
                r = run_mode(bench, m, pasm_time)
                if r:
                    r["link"] = link
                    res.append(r)
                    if m == "pasm" and r["converged"]:
                        pasm_time = r["time_s"]
            bench.link_down()
            if not res:
                note("link %s: no mode ran" % link)
                continue
            ran = True
            print()
            print("link %s: %s" % (link, "the partner on this host, unix sockets" if link == "none"
                                   else "the partner in a network namespace, TCP over a veth "
                                   "shaped to %s each way (tc tbf)" % LINKS[link]))
            table(bench, res)
            ratios(bench, res)
            print()
            for r in res:
                print("MIGRATE " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                               for k, v in r.items()}, sort_keys=True))
        if not ran:
            die("no mode ran")
    finally:
        bench.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
