#!/bin/sh
# Storage migration under a writing guest: vbdd's PASM mirror against its
# own precopy mode and against qemu-storage-daemon's blockdev-mirror
# (copy-mode=write-blocking).  Not a test: prints the figures and ratios;
# they go to bench/RESULTS.md by hand.
#
#   bench/migrate.sh [OPTIONS] [BUILD_DIR]        (bench/migrate.sh --help)
#   VBD_BENCH_DIR   where the source and destination images go (default
#                   /var/tmp; must support O_DIRECT, so not tmpfs)
#
# Every mode runs the same way, one after the other, on the same source
# image (raw, fully written first by fio, so 100% of it is data):
#   1. a fresh sparse destination image and its NBD server (the partner);
#   2. a guest doing 4 KiB random writes at queue depth 16 over the whole
#      disk, for the whole run;
#   3. a baseline window (--base-time seconds) without migrating;
#   4. the migration, started while the guest writes, until it is ready
#      (converged): its time, the guest's IOPS meanwhile, the bytes sent;
#      pasm and qsd then stay ready for --ready-time seconds (every write
#      forwarded) to measure the guest in that state;
#   5. cut-over (its downtime); vbdd modes then compare source and
#      destination while the guest is paused (random 1 MiB pieces for at
#      most --verify-time seconds; all of a small image), and undo the
#      cut-over (migrate-abort: the guest resumes locally);
#   6. a second baseline window; the baseline is the mean of the two, so
#      that a drift of the machine's load weighs on both sides.
# Modes:
#   pasm     vbd-sim's simulated guest -> vbdd-sim (ring), migrate-start
#            mode=pasm over the control socket to `vbdd --export-only
#            --nbd-writable` on a unix socket
#   precopy  the same with mode=precopy; it gets 3x the PASM time (at most
#            --precopy-max, 90 s, to keep the run short; or --precopy-limit)
#            to converge, else "did not converge"
#   qsd      fio's nbd engine (the guest) writing to a qemu-storage-daemon
#            NBD export of the source; blockdev-mirror sync=full
#            copy-mode=write-blocking to a second qemu-storage-daemon
#            serving the destination over NBD (unix socket)
# Guest IOPS come from the daemon's own counters: vbdd's "stats" (polled
# every 0.2 s) and fio's --status-interval=1 reports.  Bytes sent: the
# mirror's counters (vbdd's bytes_sent; qemu's job offset) and, for both,
# the bytes the partner process wrote to its image (/proc/PID/io
# write_bytes: data it received, O_DIRECT).  The control socket of the
# simulated daemon is found through VBD_RUNTIME_DIR, which vbd-sim passes on
# to vbdd-sim.  Needs: python3, fio (with its nbd engine), qemu-storage-daemon
# (Debian: qemu-system-common).  About 5.5 minutes at
# the defaults; --size 256M --base-time 3 for a quick run (about 2 min).
set -eu
exec python3 - "$@" <<'PYTHON'
import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

ap = argparse.ArgumentParser(
    prog="bench/migrate.sh",
    description="Migration under a writing guest: vbdd PASM vs precopy vs "
    "qemu-storage-daemon blockdev-mirror (write-blocking).")
ap.add_argument("build", nargs="?", default="build", help="build directory (default: build)")
ap.add_argument("--size", default="2G", help="image size (default 2G; e.g. 256M for a quick run)")
ap.add_argument("--modes", default="pasm,precopy,qsd", help="comma list of pasm, precopy, qsd")
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
ap.add_argument("--bs", type=int, default=4096, help="guest write size (default 4096)")
ap.add_argument("--iodepth", type=int, default=16, help="guest queue depth (default 16)")
ap.add_argument("--mig-args", default="{}",
                help='extra migrate-start args (JSON) for pasm and precopy, e.g. \'{"share":50}\'')
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
ap.add_argument("--keep", action="store_true", help="keep the images and the work directory")
opt = ap.parse_args(sys.argv[1:])


def parse_size(s):
    mult = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    s = s.strip().upper().rstrip("B").rstrip("I")
    if s and s[-1] in mult:
        return int(float(s[:-1]) * mult[s[-1]])
    return int(s)


def die(msg):
    print("bench: " + msg, file=sys.stderr)
    sys.exit(1)


def note(msg):
    print("bench: " + msg, file=sys.stderr, flush=True)


SIZE = parse_size(opt.size)
if SIZE < (16 << 20) or SIZE % (1 << 20):
    die("--size must be a multiple of 1 MiB, at least 16M")
MODES = [m for m in opt.modes.split(",") if m]
for m in MODES:
    if m not in ("pasm", "precopy", "qsd"):
        die("--modes: unknown mode '%s'" % m)
try:
    MIG_ARGS = json.loads(opt.mig_args)
    QSD_ARGS = json.loads(opt.qsd_args)
    assert isinstance(MIG_ARGS, dict) and isinstance(QSD_ARGS, dict)
except (ValueError, AssertionError):
    die("--mig-args and --qsd-args must be JSON objects")

B = os.path.abspath(opt.build)
SIM = os.path.join(B, "tests/sim/front/vbd-sim")
VBDD_SIM = os.path.join(B, "tests/sim/vbdd-sim")
VBDD = os.path.join(B, "vbdd")
BDIR = os.environ.get("VBD_BENCH_DIR", "/var/tmp")
SRC = os.path.join(BDIR, "vbd-migrate-src.img")
DST = os.path.join(opt.dst_dir or BDIR, "vbd-migrate-dst.img")
WORK = tempfile.mkdtemp(prefix="vbd-mbench.", dir="/tmp")  # short: sun_path is 108 bytes
CLK = os.sysconf("SC_CLK_TCK")

need = ["fio"]
if "qsd" in MODES:
    need.append("qemu-storage-daemon")
for t in need:
    if not shutil.which(t):
        die("%s is needed" % t)
if "qsd" in MODES and "uri" not in subprocess.run(
        ["fio", "--enghelp=nbd"], capture_output=True, text=True).stdout:
    die("fio has no nbd engine (Debian's fio has it)")
if set(MODES) & {"pasm", "precopy"}:
    for p in (SIM, VBDD_SIM, VBDD):
        if not os.access(p, os.X_OK):
            die("build first (%s missing)" % p)

procs = []  # (Popen, name), stopped in reverse order at exit


def spawn(name, argv, **kw):
    log = open(os.path.join(WORK, name + ".log"), "ab")
    kw.setdefault("stdout", log)
    p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log, **kw)
    procs.append((p, name))
    return p


def stop(p, sig=signal.SIGTERM, wait=20):
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


def log_tail(name, n=15):
    try:
        with open(os.path.join(WORK, name + ".log"), errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def wait_sock(path, proc, name, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        if os.path.exists(path):
            try:
                s = socket.socket(socket.AF_UNIX)
                s.connect(path)
                s.close()
                return
            except OSError:
                pass
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    raise RuntimeError("%s did not start (no %s)\n%s" % (name, path, log_tail(name)))


def partner_io(pid):
    """Bytes the partner wrote to its image; None where the kernel does not
    count them (tmpfs has no block I/O)."""
    return proc_io(pid) if not DST_TMPFS else None


def proc_io(pid, key="write_bytes"):
    try:
        with open("/proc/%d/io" % pid) as f:
            for line in f:
                k, v = line.split(":")
                if k == key:
                    return int(v)
    except OSError:
        pass
    return None


def proc_cpu(pid):
    """utime+stime of pid (all threads), seconds."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK
    except (OSError, IndexError, ValueError):
        return None


class CtlError(Exception):
    def __init__(self, cmd, err):
        super().__init__("%s: %s %s" % (cmd, err.get("code"), err.get("message")))
        self.code = err.get("code")


class Ctl:
    """vbdd's control socket: one JSON line each way (src/ctl.h)."""

    def __init__(self, path, timeout=120):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(timeout)
        self.s.connect(path)
        self.buf = b""
        self.n = 0

    def call(self, cmd, args=None):
        self.n += 1
        req = {"v": 1, "id": self.n, "cmd": cmd}
        if args is not None:
            req["args"] = args
        self.s.sendall(json.dumps(req).encode() + b"\n")
        while b"\n" not in self.buf:
            chunk = self.s.recv(65536)
            if not chunk:
                raise ConnectionError("%s: the daemon closed the control connection" % cmd)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        rep = json.loads(line)
        if not rep.get("ok"):
            raise CtlError(cmd, rep.get("error") or {})
        return rep.get("result")

    def close(self):
        self.s.close()


class QMP:
    def __init__(self, path):
        self.s = socket.socket(socket.AF_UNIX)
        self.s.settimeout(120)
        self.s.connect(path)
        self.f = self.s.makefile("rwb")
        self.events = []
        self._read()
        self.cmd("qmp_capabilities")

    def _read(self):
        line = self.f.readline()
        if not line:
            raise ConnectionError("QMP connection closed")
        return json.loads(line)

    def cmd(self, name, **args):
        self.f.write((json.dumps({"execute": name, "arguments": args}) + "\n").encode())
        self.f.flush()
        while True:
            m = self._read()
            if "event" in m:
                m["t"] = m["timestamp"]["seconds"] + m["timestamp"]["microseconds"] / 1e6
                self.events.append(m)
                continue
            if "error" in m:
                raise RuntimeError("QMP %s: %s" % (name, m["error"].get("desc")))
            return m["return"]

    def event(self, name):
        for e in self.events:
            if e["event"] == name:
                return e
        return None


class Series:
    """Cumulative guest write counts over wall-clock time."""

    def __init__(self):
        self.pts = []

    def add(self, t, n):
        self.pts.append((t, n))

    def at(self, t):
        p = self.pts
        if not p:
            return None
        if t <= p[0][0]:
            return p[0][1]
        for (t0, n0), (t1, n1) in zip(p, p[1:]):
            if t0 <= t <= t1:
                return n0 + (n1 - n0) * (t - t0) / (t1 - t0) if t1 > t0 else n1
        return p[-1][1]

    def rate(self, t0, t1):
        a, b = self.at(t0), self.at(t1)
        if a is None or b is None or t1 <= t0:
            return None
        return (b - a) / (t1 - t0)

    def worst(self, t0, t1, step=1.0):
        """Lowest rate over step-long slices of [t0, t1]."""
        rates = []
        t = t0
        while t + step <= t1 + 1e-9:
            rates.append(self.rate(t, t + step))
            t += step
        rates = [r for r in rates if r is not None]
        return min(rates) if rates else None


class StatsSampler(threading.Thread):
    """Polls vbdd's "stats" (write requests completed) every 0.2 s."""

    def __init__(self, path):
        super().__init__(daemon=True)
        self.ctl = Ctl(path, timeout=30)
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


def base(r, s, tb0, tb1, ta0, ta1):
    """The baseline: the guest's rate in a window before the migration and one
    after it (cut-over undone, nothing mirrored), averaged, so that a drift in
    the machine's load over the run weighs on both sides."""
    r["base_before_iops"] = s.rate(tb0, tb1)
    r["base_after_iops"] = s.rate(ta0, ta1)
    r["base_iops"] = ((s.at(tb1) - s.at(tb0)) + (s.at(ta1) - s.at(ta0))) / (
        (tb1 - tb0) + (ta1 - ta0))


def fresh_dst():
    if os.path.exists(DST):
        os.unlink(DST)
    with open(DST, "wb") as f:
        f.truncate(SIZE)


def dst_direct():
    """Whether the destination's file system takes O_DIRECT (tmpfs does not)."""
    fresh_dst()
    try:
        os.close(os.open(DST, os.O_RDWR | os.O_DIRECT))
        return True
    except OSError:
        return False


def verify(budget):
    """Compare source and destination 1 MiB at a time, in random order, for at
    most budget seconds (the guest is paused meanwhile, and vbd-sim gives up
    on requests unanswered for 10 s).  (equal, fraction compared, seconds)."""
    import random
    t = time.time()
    chunk = 1 << 20
    order = list(range(SIZE // chunk))
    random.shuffle(order)
    done = 0
    fa, fb = os.open(SRC, os.O_RDONLY), os.open(DST, os.O_RDONLY)
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


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


def sleep_until(t):
    while time.time() < t:
        time.sleep(min(0.1, t - time.time()))


def timeline(mode, series, prog, tb0, t0, t1):
    """--timeline: guest IOPS and copy progress per second, from the baseline
    to a few seconds after ready."""
    if not opt.timeline:
        return
    print("timeline %s: t(s, 0 = migration start) guest-write-IOPS progress" % mode,
          file=sys.stderr)
    t = t0 - int(t0 - tb0)
    while t + 1 <= min(t1 + opt.ready_time, series.pts[-1][0]) + 1e-9:
        p = [v for (u, v) in prog if u <= t + 1]
        print("timeline %s %6.0f %7s %5s" % (
            mode, t - t0, fmt(series.rate(t, t + 1)),
            "%.0f%%" % (100 * p[-1]) if p and t + 1 > t0 else "-"), file=sys.stderr)
        t += 1


def progress(mode, t0, last, msg):
    if time.time() - last[0] >= 10:
        last[0] = time.time()
        note("%s: %.0f s, %s" % (mode, time.time() - t0, msg))


# ---------------------------------------------------------------------------
# vbdd modes


def run_vbd(mode, limit):
    r = {"mode": mode, "size": SIZE, "load_before": loadavg(), "converged": False}
    fresh_dst()
    psock = os.path.join(WORK, "partner-%s.sock" % mode)
    spec = "raw:%s,direct=%s" % (DST, "on" if DST_DIRECT else "off")
    partner = spawn("partner-" + mode, [VBDD, "--export-only", "--image", spec,
                                        "--nbd", "unix:" + psock, "--nbd-writable", "-q"])
    wait_sock(psock, partner, "partner-" + mode)
    uri = "nbd+unix:///?socket=" + psock
    rtdir = os.path.join(WORK, "run-" + mode)
    os.mkdir(rtdir, 0o700)
    env = dict(os.environ, VBD_SIM_VBDD=VBDD_SIM, VBD_RUNTIME_DIR=rtdir)
    gout = os.path.join(WORK, "guest-%s.json" % mode)
    guest = spawn("guest-" + mode, [SIM, "bench", "--image", "raw:" + SRC, "--rw", "randwrite",
                                    "--bs", str(opt.bs), "--iodepth", str(opt.iodepth),
                                    "--runtime", "100000", "--json"],
                  env=env, stdout=open(gout, "wb"))
    csock = os.path.join(rtdir, "vbdd-1-51712.sock")
    wait_sock(csock, guest, "guest-" + mode)
    ctl = Ctl(csock)
    src_pid = ctl.call("info")["pid"]
    sampler = StatsSampler(csock)
    sampler.start()
    end = time.time() + 30
    while not (sampler.series.pts and sampler.series.pts[-1][1] > 0):
        if time.time() > end or guest.poll() is not None:
            raise RuntimeError("the guest does not write\n" + log_tail("guest-" + mode))
        time.sleep(0.1)
    time.sleep(opt.warmup)
    tb0 = time.time()
    time.sleep(opt.base_time)
    tb1 = time.time()
    args = dict(MIG_ARGS, to=uri, mode=mode)
    wb0, pc0, sc0 = partner_io(partner.pid), proc_cpu(partner.pid), proc_cpu(src_pid)
    t0 = time.time()
    st = ctl.call("migrate-start", args)
    last = [t0]
    prog = []
    while True:
        st = ctl.call("migrate-status")
        now = time.time()
        prog.append((now, st.get("bytes_synced", 0) / SIZE))
        if st["state"] == "ready":
            r["converged"] = True
            break
        if st["state"] in ("failed", "aborted", "none", "cutover"):
            r["error"] = "state %s: %s" % (st["state"], st.get("error", ""))
            break
        if now - t0 > limit:
            break
        progress(mode, t0, last, "%s, progress %.0f%%, passes %s, dirty %s MiB" % (
            st["state"], 100 * st.get("progress", 0), st.get("passes"),
            st.get("dirty_bytes", 0) >> 20))
        time.sleep(0.05)
    t1 = time.time()
    wb1, pc1, sc1 = partner_io(partner.pid), proc_cpu(partner.pid), proc_cpu(src_pid)
    r.update(time_s=t1 - t0, limit_s=limit, base_window_s=tb1 - tb0, state=st["state"])
    for k in ("bytes_sent", "bytes_copied", "bytes_zeroed", "bytes_forwarded",
              "writes_forwarded", "writes_waited", "passes", "dirty_bytes", "region_size",
              "bytes_synced"):
        r[k] = st.get(k)
    if r["converged"] and mode == "pasm" and opt.ready_time > 0:
        tr0 = time.time()
        time.sleep(opt.ready_time)
        r["ready_window"] = (tr0, time.time())
    if r["converged"]:
        end = time.time() + 30
        while True:
            tc = time.time()
            try:
                cut = ctl.call("migrate-cutover")
                break
            except CtlError as e:  # EAGAIN: a write made a region unsent again
                if e.code != "EAGAIN" or time.time() > end:
                    raise
                time.sleep(0.05)
        r["cutover_call_ms"] = (time.time() - tc) * 1000
        r["downtime_ms"] = cut.get("downtime_ms")
        r["state"] = cut["state"]
        for k in ("bytes_sent", "bytes_copied", "bytes_forwarded", "writes_forwarded"):
            r[k + "_at_cutover"] = cut.get(k)
        r["partner_wrote_at_cutover"] = (partner_io(partner.pid) - wb0) if wb0 is not None else None
        if not opt.no_verify:
            r["verified"], r["verified_fraction"], r["verify_s"] = verify(opt.verify_time)
    try:
        ctl.call("migrate-abort")  # after cut-over: resume the VBD locally
    except CtlError as e:
        if e.code != "ENOENT":
            raise
    # The second baseline window: the guest again without a migration.
    time.sleep(1)
    ta0 = time.time()
    time.sleep(opt.base_time)
    ta1 = time.time()
    sampler.stop()
    if sampler.error:
        raise RuntimeError("stats sampler: %s" % sampler.error)
    s = sampler.series
    r["partner_wrote"] = wb1 - wb0 if wb0 is not None and wb1 is not None else None
    r["partner_cpu_pct"] = 100 * (pc1 - pc0) / (t1 - t0)
    r["src_cpu_pct"] = 100 * (sc1 - sc0) / (t1 - t0)
    base(r, s, tb0, tb1, ta0, ta1)
    r["mig_iops"] = s.rate(t0, t1)
    r["worst_1s_iops"] = s.worst(t0, t1)
    r["guest_bytes_during"] = int((s.at(t1) - s.at(t0)) * opt.bs)
    if "ready_window" in r:
        r["ready_iops"] = s.rate(*r.pop("ready_window"))
    timeline(mode, s, prog, tb0, t0, t1)
    ctl.close()
    stop(guest, signal.SIGINT, 60)
    try:
        with open(gout) as f:
            g = json.loads(f.read().strip().splitlines()[-1])
        r["guest_errors"] = g["errors"]
    except (OSError, ValueError, IndexError, KeyError):
        r["guest_errors"] = None
        note("%s: no result from the guest (exit %s)\n%s" % (mode, guest.returncode,
                                                             log_tail("guest-" + mode)))
    if guest.returncode != 0:
        r["guest_exit"] = guest.returncode
    r["partner_exit"] = stop(partner)
    r["load_after"] = loadavg()
    return r


# ---------------------------------------------------------------------------
# qemu-storage-daemon


def qsd(name, img, node, direct=True):
    sock = os.path.join(WORK, name + ".sock")
    qmp = os.path.join(WORK, name + ".qmp")
    p = spawn(name, ["qemu-storage-daemon",
                     "--blockdev", "driver=file,node-name=f0,filename=%s,%s" % (
                         img, "cache.direct=on,aio=native" if direct else "aio=threads"),
                     "--blockdev", "driver=raw,node-name=%s,file=f0" % node,
                     "--nbd-server", "addr.type=unix,addr.path=" + sock,
                     "--export", "type=nbd,id=e0,node-name=%s,name=%s,writable=on" % (node, node),
                     "--chardev", "socket,id=qmp,path=%s,server=on,wait=off" % qmp,
                     "--monitor", "chardev=qmp"])
    wait_sock(qmp, p, name)
    wait_sock(sock, p, name)
    return p, sock, QMP(qmp)


def fio_series(path):
    s, last = Series(), None
    dec = json.JSONDecoder()
    with open(path, errors="replace") as f:
        txt = f.read()
    i = 0
    while True:
        j = txt.find("{", i)
        if j < 0:
            break
        try:
            o, i = dec.raw_decode(txt, j)
        except ValueError:
            i = j + 1
            continue
        if "jobs" in o and "timestamp_ms" in o:
            s.add(o["timestamp_ms"] / 1000, o["jobs"][0]["write"]["total_ios"])
            last = o
    return s, last


def run_qsd(limit):
    r = {"mode": "qsd", "size": SIZE, "load_before": loadavg(), "converged": False}
    fresh_dst()
    tgt, tsock, tq = qsd("qsd-dst", DST, "dst", DST_DIRECT)
    src, ssock, q = qsd("qsd-src", SRC, "src")
    fout = os.path.join(WORK, "fio-qsd.json")
    guest = spawn("fio-qsd", ["fio", "--name=guest", "--ioengine=nbd",
                              "--uri=nbd+unix:///src?socket=" + ssock, "--rw=randwrite",
                              "--bs=%d" % opt.bs, "--iodepth=%d" % opt.iodepth,
                              "--size=%d" % SIZE, "--time_based", "--runtime=100000",
                              "--norandommap", "--randrepeat=0", "--status-interval=1",
                              "--output-format=json"], stdout=open(fout, "wb"))
    end = time.time() + 30
    while True:
        s, _ = fio_series(fout)
        if s.pts and s.pts[-1][1] > 0:
            break
        if time.time() > end or guest.poll() is not None:
            raise RuntimeError("fio does not write\n" + log_tail("fio-qsd"))
        time.sleep(0.2)
    time.sleep(opt.warmup)
    tb0 = time.time()
    time.sleep(opt.base_time)
    tb1 = time.time()
    q.cmd("blockdev-add", driver="nbd", **{"node-name": "tgt"},
          server={"type": "unix", "path": tsock}, export="dst")
    wb0, pc0, sc0 = partner_io(tgt.pid), proc_cpu(tgt.pid), proc_cpu(src.pid)
    t0 = time.time()
    q.cmd("blockdev-mirror", **dict({"job-id": "m0", "device": "src", "target": "tgt",
                                     "sync": "full", "copy-mode": "write-blocking"}, **QSD_ARGS))
    last = [t0]
    job = {}
    prog = []
    while True:
        jobs = q.cmd("query-block-jobs")
        job = jobs[0] if jobs else job
        if job:
            prog.append((time.time(), job["offset"] / max(job["len"], 1)))
        ev = q.event("BLOCK_JOB_READY")
        if ev:
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
    t1 = time.time()
    wb1, pc1, sc1 = partner_io(tgt.pid), proc_cpu(tgt.pid), proc_cpu(src.pid)
    r.update(time_s=t1 - t0, limit_s=limit, base_window_s=tb1 - tb0,
             job_offset=job.get("offset"), job_len=job.get("len"))
    if r["converged"]:
        ev = q.event("BLOCK_JOB_READY")
        r["job_offset"], r["job_len"] = ev["data"]["offset"], ev["data"]["len"]
    if r["converged"] and opt.ready_time > 0:
        tr0 = time.time()
        time.sleep(opt.ready_time)
        ready_window = (tr0, time.time())
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
        r["partner_wrote_at_cutover"] = (partner_io(tgt.pid) - wb0) if wb0 is not None else None
    time.sleep(1)
    ta0 = time.time()
    time.sleep(opt.base_time)
    ta1 = time.time()
    stop(guest, signal.SIGINT, 60)
    s, fin = fio_series(fout)
    r["partner_wrote"] = wb1 - wb0 if wb0 is not None and wb1 is not None else None
    r["partner_cpu_pct"] = 100 * (pc1 - pc0) / (t1 - t0)
    r["src_cpu_pct"] = 100 * (sc1 - sc0) / (t1 - t0)
    base(r, s, tb0, tb1, ta0, ta1)
    r["mig_iops"] = s.rate(t0, t1)
    r["worst_1s_iops"] = s.worst(t0, t1)
    r["guest_bytes_during"] = int((s.at(t1) - s.at(t0)) * opt.bs) if s.pts else None
    if r["converged"] and opt.ready_time > 0:
        r["ready_iops"] = s.rate(*ready_window)
    timeline("qsd", s, prog, tb0, t0, t1)
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


def fmt(v, f="%.0f"):
    return "-" if v is None else f % v


def ratio(a, b, f="%.2f"):
    return "-" if a is None or b in (None, 0) else f % (a / b)


def table(results):
    cols = [r["mode"] for r in results]
    w = 16
    print("%-40s" % "" + "".join("%*s" % (w, c) for c in cols))

    def row(label, fn):
        cells = []
        for r in results:
            try:
                cells.append(fn(r))
            except (KeyError, TypeError, ZeroDivisionError):
                cells.append("-")
        print("%-40s" % label + "".join("%*s" % (w, c) for c in cells))

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
    row("guest IOPS ratio while ready (%.0f s)" % opt.ready_time,
        lambda r: ratio(r["ready_iops"], r["base_iops"]))
    row("guest worst 1 s / baseline", lambda r: ratio(r["worst_1s_iops"], r["base_iops"]))
    row("guest MiB written during migration", lambda r: "%.0f" % (r["guest_bytes_during"] / 2**20))
    row("MiB sent (mirror's count)", lambda r: "%.0f" % (r["bytes_sent"] / 2**20))
    row("  of which copied / forwarded (MiB)", lambda r: "-" if r["mode"] == "qsd" else
        "%.0f / %.0f" % (r["bytes_copied"] / 2**20, r["bytes_forwarded"] / 2**20))
    row("MiB the partner wrote", lambda r: "%.0f" % (r["partner_wrote"] / 2**20))
    row("bytes sent / image size", lambda r: ratio(r["bytes_sent"], SIZE))
    row("bytes sent / (size + forwarded)", lambda r: "-" if r["mode"] == "qsd" else
        ratio(r["bytes_sent"], SIZE + r["bytes_forwarded"]))
    row("bytes sent / (size + guest writes)", lambda r: ratio(r["bytes_sent"],
                                                              SIZE + r["guest_bytes_during"]))
    row("partner wrote / image size", lambda r: ratio(r["partner_wrote"], SIZE))
    row("precopy passes done", lambda r: "-" if r["mode"] != "precopy" else str(r["passes"]))
    row("precopy MiB re-dirtied (cumulative)", lambda r: "-" if r["mode"] != "precopy" else
        "%.0f" % (r["dirty_bytes"] / 2**20))
    row("precopy MiB unsent at the end", lambda r: "-" if r["mode"] != "precopy" else
        "%.0f" % ((SIZE - r["bytes_synced"]) / 2**20))
    row("guest writes that waited (vbdd)", lambda r: fmt(r.get("writes_waited")))
    row("source daemon CPU % (migrating)", lambda r: fmt(r["src_cpu_pct"]))
    row("partner CPU % (migrating)", lambda r: fmt(r["partner_cpu_pct"]))
    row("guest errors", lambda r: "exit %s" % r["guest_exit"] if r.get("guest_exit") else
        str(r["guest_errors"]))
    row("load before / after", lambda r: "%s/%s" % (r["load_before"].split()[0],
                                                     r["load_after"].split()[0]))


def ratios(res):
    by = {r["mode"]: r for r in res}
    p = by.get("pasm")
    if not p:
        return
    print()
    for peer in ("precopy", "qsd"):
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
    lim = 1.1 * SIZE + (p["bytes_forwarded"] or 0)
    ok.append(("bytes sent <= 1.1x size + forwarded", p["bytes_sent"] is not None and
               p["bytes_sent"] <= lim, "%.3f" % (p["bytes_sent"] / (SIZE + p["bytes_forwarded"]))
               if p["bytes_sent"] is not None else "-"))
    ok.append(("converges", p["converged"] and p.get("verified", True) is not False,
               "%.1f s" % p["time_s"]))
    ok.append(("guest I/O without errors", p.get("guest_errors") == 0 and not p.get("guest_exit"),
               "errors %s, exit %s" % (p.get("guest_errors"), p.get("guest_exit", 0))))
    for what, good, val in ok:
        print("target: %-38s %-5s (%s)" % (what, "met" if good else "NOT met", val))


def main():
    res = []
    print("vbd migrate bench: %s, %d cores, load %s; %s" % (
        time.strftime("%Y-%m-%dT%H:%MZ", time.gmtime()), os.cpu_count(), loadavg(),
        os.uname().release))
    print("image %d MiB raw, 100%% written (fio, 1M sequential), in %s; guest: %d-byte "
          "random writes at QD%d (vbd-sim through the ring for pasm/precopy, fio's nbd engine "
          "for qsd); baseline: %.0f s before + %.0f s after each migration" % (
              SIZE >> 20, BDIR, opt.bs, opt.iodepth, opt.base_time, opt.base_time))
    global DST_DIRECT, DST_TMPFS
    DST_DIRECT = dst_direct()
    DST_TMPFS = subprocess.run(["stat", "-f", "-c", "%T", DST], capture_output=True,
                               text=True).stdout.strip() == "tmpfs"
    if DST != os.path.join(BDIR, "vbd-migrate-dst.img"):
        print("destination image in %s (%s%s)" % (
            os.path.dirname(DST), "O_DIRECT" if DST_DIRECT else "no O_DIRECT: page cache",
            ", tmpfs" if DST_TMPFS else ""))
    subprocess.run(["fio", "--name=fill", "--filename=" + SRC, "--size=%d" % SIZE,
                    "--rw=write", "--bs=1M", "--ioengine=libaio", "--direct=1",
                    "--iodepth=8", "--output=/dev/null"], check=True)
    pasm_time = None
    for m in MODES:
        note("%s: starting (load %s)" % (m, loadavg()))
        try:
            if m == "qsd":
                r = run_qsd(opt.limit)
            elif m == "pasm":
                r = run_vbd("pasm", opt.limit)
                if r["converged"]:
                    pasm_time = r["time_s"]
            else:
                lim = opt.precopy_limit or (
                    min(opt.precopy_max, max(20, opt.precopy_factor * pasm_time))
                    if pasm_time else 60)
                r = run_vbd("precopy", lim)
        except (RuntimeError, OSError, CtlError, ConnectionError) as e:
            note("%s failed: %s" % (m, e))
            for p, name in reversed(procs):
                stop(p)
            procs.clear()
            continue
        for p, name in reversed(procs):
            stop(p)
        procs.clear()
        note("%s: done in %.1f s, %s" % (m, r["time_s"],
                                         "converged" if r["converged"] else "not converged"))
        res.append(r)
    if not res:
        die("no mode ran")
    print()
    table(res)
    ratios(res)
    print()
    for r in res:
        print("MIGRATE " + json.dumps({k: (round(v, 3) if isinstance(v, float) else v)
                                       for k, v in r.items()}, sort_keys=True))


try:
    main()
finally:
    for p, name in reversed(procs):
        stop(p)
    if opt.keep:
        note("kept %s, %s, %s" % (WORK, SRC, DST))
    else:
        shutil.rmtree(WORK, ignore_errors=True)
        for f in (SRC, DST):
            try:
                os.unlink(f)
            except OSError:
                pass
PYTHON
