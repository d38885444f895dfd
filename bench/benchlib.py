#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""What the benchmarks under bench/ share: processes and their logs, /proc
counters, fio, QMP, a counter sampled over time, and the formatting of
figures.  Standard library only; the control socket is tests/lib/vbdctl.py.

As a program, for the shell benchmarks (run.sh, nbd.sh, qcow2.sh):

    benchlib.py fill FILE SIZE    write FILE fully with fio (1 MiB sequential,
                                  O_DIRECT), so that reads hit real blocks
    benchlib.py json EXPR         print the Python expression EXPR over the
                                  JSON object on stdin, named d
    benchlib.py ratio A B         print A / B with two decimals ("-" when B
                                  is 0 or either is not a number)
    benchlib.py fiosum            one line of JSON from fio's JSON on stdin:
                                  iops, mb_s, ios, cpu_s (fio's usr+sys) and
                                  cpu_ns_per_io
    benchlib.py peers FILE        the vbdd-vs-fio table of bench/run.sh from
                                  FILE's lines "WORKLOAD|SIDE|ROUND|JSON"
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

CLK = os.sysconf("SC_CLK_TCK")


def parse_size(s):
    """"256M", "2G", "1GiB", "4096" -> bytes."""
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


def loadavg():
    return "%.2f %.2f %.2f" % os.getloadavg()


# ---------------------------------------------------------------------------
# Processes


def stop(p, sig=signal.SIGTERM, wait=20):
    """Signal p unless it has exited, reap it (SIGKILL after wait seconds);
    its exit status."""
    if p.poll() is None:
        try:
            p.send_signal(sig)
            p.wait(wait)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    return p.returncode


class Procs:
    """The processes a benchmark started, each logging (stderr, and stdout
    unless it goes to a file) to WORKDIR/NAME.log."""

    def __init__(self, workdir):
        self.workdir = workdir
        self.procs = []

    def spawn(self, name, argv, out=None, env=None):
        """Start argv as NAME; out: a file for its stdout."""
        log = open(os.path.join(self.workdir, name + ".log"), "ab")
        stdout = open(out, "wb") if out else log
        try:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=stdout, stderr=log,
                                 env=env)
        finally:
            stdout.close()
            log.close()
        self.procs.append(p)
        return p

    def stop_all(self):
        """SIGTERM every process still running, the last started first."""
        for p in reversed(self.procs):
            stop(p)
        self.procs.clear()

    def log_tail(self, name, n=15):
        try:
            with open(os.path.join(self.workdir, name + ".log"), errors="replace") as f:
                return "".join(f.readlines()[-n:])
        except OSError:
            return ""

    def wait_sock(self, path, proc, name, timeout=30):
        """Wait until a unix socket accepts connections at path; RuntimeError
        (with NAME's log) if proc exits first or after timeout seconds."""
        end = time.time() + timeout
        while time.time() < end:
            if os.path.exists(path):
                try:
                    with socket.socket(socket.AF_UNIX) as s:
                        s.connect(path)
                    return
                except OSError:
                    pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("%s did not start (no %s)\n%s" % (name, path, self.log_tail(name)))


def proc_io(pid, key="write_bytes"):
    """A counter of /proc/PID/io; None if unreadable."""
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


# ---------------------------------------------------------------------------
# A second host: a network namespace behind a shaped veth pair


NETNS_SH = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib",
                        "netns.sh")
LINKS = {"none": None, "10g": "10gbit", "1g": "1gbit"}  # --link: tc rates


class NetLink:
    """The partner's host: network namespace NAME (at most 10 characters)
    behind a veth pair shaped to RATE (tc units, e.g. 1gbit) each way, made
    and removed by tests/lib/netns.sh (the tests' implementation).  .ns,
    .host_addr, .ns_addr, .host_if; run a program there with argv(ARGV)
    (ip execs it: the pid is the program's, its CPU its own).
    RuntimeError (with the reason) if it cannot be made."""

    def __init__(self, name, rate):
        chk = subprocess.run([NETNS_SH, "check"], capture_output=True, text=True)
        if chk.returncode != 0:
            raise RuntimeError("no network namespace here: " + chk.stderr.strip())
        up = subprocess.run([NETNS_SH, "up", name, rate], capture_output=True, text=True)
        if up.returncode != 0:
            raise RuntimeError("netns.sh up %s %s: %s" % (name, rate, up.stderr.strip()))
        v = dict(kv.split("=", 1) for kv in up.stdout.split())
        self.ns, self.rate = v["NETNS"], v["RATE"]
        self.host_addr, self.ns_addr, self.host_if = v["HOST_ADDR"], v["NS_ADDR"], v["HOST_IF"]

    def argv(self, argv):
        return ["ip", "netns", "exec", self.ns] + list(argv)

    def counter(self, name="tx_bytes"):
        """A statistic of the host's end (tx_bytes: sent towards the partner)."""
        with open("/sys/class/net/%s/statistics/%s" % (self.host_if, name)) as f:
            return int(f.read())

    def wait_tcp(self, port, proc, name, procs, timeout=30):
        """Wait until the partner's ns_addr:port accepts a connection from the
        host (across the link); RuntimeError (with NAME's log) if proc exits
        first or after timeout seconds."""
        end = time.time() + timeout
        while time.time() < end:
            try:
                socket.create_connection((self.ns_addr, port), timeout=2).close()
                return
            except OSError:
                pass
            if proc.poll() is not None:
                break
            time.sleep(0.05)
        raise RuntimeError("%s does not listen on %s:%d\n%s" % (
            name, self.ns_addr, port, procs.log_tail(name)))

    def down(self):
        subprocess.run([NETNS_SH, "down", self.ns])


# ---------------------------------------------------------------------------
# fio


def fio_fill(path, size):
    """Write path fully (size: bytes, or fio's "1G"), 1 MiB sequential with
    O_DIRECT: an image that is 100% data, so that reads hit real blocks."""
    subprocess.run(["fio", "--name=fill", "--filename=" + path, "--size=%s" % size,
                    "--rw=write", "--bs=1M", "--ioengine=libaio", "--direct=1",
                    "--iodepth=8", "--output=/dev/null"], check=True)


def fio_has_nbd():
    """Whether fio has its nbd engine (Debian's has)."""
    return "uri" in subprocess.run(["fio", "--enghelp=nbd"], capture_output=True,
                                   text=True).stdout


def fio_series(path):
    """fio's --status-interval JSON reports in path (among other output):
    (Series of the first job's write total_ios over time, the last report)."""
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


def fio_summary(d):
    """fio's JSON (one job) -> requests/s, MB/s, requests, and the job's own
    CPU (usr_cpu + sys_cpu, percent of one core over its runtime) in seconds
    and nanoseconds per request."""
    j = d["jobs"][0]
    ios = j["read"]["total_ios"] + j["write"]["total_ios"]
    runtime_s = (j.get("job_runtime") or max(j["read"]["runtime"], j["write"]["runtime"])) / 1000
    cpu_s = (j["usr_cpu"] + j["sys_cpu"]) / 100 * runtime_s
    return {"iops": j["read"]["iops"] + j["write"]["iops"],
            "mb_s": (j["read"]["bw_bytes"] + j["write"]["bw_bytes"]) / 1e6,
            "ios": ios, "cpu_s": cpu_s,
            "cpu_ns_per_io": cpu_s * 1e9 / ios if ios else None}


PEER_NAMES = {"libaio": "fio libaio, defaults", "libaio-batched": "fio libaio, batched",
              "io_uring": "fio io_uring, batched", "vbdd": "vbdd + vbd-sim"}
TUNED = ("libaio-batched", "io_uring")


def _mean(xs):
    xs = [x for x in xs if x is not None and x >= 0]
    return sum(xs) / len(xs) if xs else None


def peers_table(path):
    """bench/run.sh's raw-driver table: per workload each side's mean over
    the rounds (requests/s, MB/s, CPU ns per request; vbdd's is the daemon's
    plus the simulated guest's), then vbdd over the best tuned fio."""
    rows = {}
    order = []
    with open(path) as f:
        for line in f:
            wl, side, _rnd, js = line.rstrip("\n").split("|", 3)
            d = json.loads(js)
            if wl not in rows:
                rows[wl] = {}
                order.append(wl)
            r = rows[wl].setdefault(side, {"iops": [], "mb_s": [], "cpu": [], "be": [], "fe": []})
            r["iops"].append(d["iops"])
            r["mb_s"].append(d["mb_s"])
            if side == "vbdd":
                be, fe = d.get("backend_cpu_ns_per_io"), d.get("front_cpu_ns_per_io")
                r["be"].append(be)
                r["fe"].append(fe)
                r["cpu"].append(be + fe if be is not None and fe is not None and be >= 0 and fe >= 0
                                else None)
            else:
                r["cpu"].append(d["cpu_ns_per_io"])
    print("%-22s %-22s %9s %8s %11s  %-17s %s" % ("workload", "side", "req/s", "MB/s",
                                                  "CPU ns/req", "req/s per round",
                                                  "(vbdd: daemon + guest)"))
    for wl in order:
        sides = rows[wl]
        m = {s: {k: _mean(v) for k, v in r.items()} for s, r in sides.items()}
        first = True
        for s in ("libaio", "libaio-batched", "io_uring", "vbdd"):
            if s not in m:
                continue
            extra = ""
            if s == "vbdd":
                extra = "(%s + %s)" % (fmt(m[s]["be"]), fmt(m[s]["fe"]))
            print("%-22s %-22s %9s %8s %11s  %-17s %s" % (
                wl.replace("_", " ") if first else "", PEER_NAMES[s], fmt(m[s]["iops"]),
                fmt(m[s]["mb_s"], "%.1f"), fmt(m[s]["cpu"]),
                " / ".join(fmt(x) for x in sides[s]["iops"]), extra))
            first = False
        tuned = [s for s in TUNED if s in m and m[s]["iops"]]
        if "vbdd" in m and tuned:
            best = max(tuned, key=lambda s: m[s]["iops"])
            v, b = m["vbdd"], m[best]
            print("%-22s vbdd / best tuned fio (%s): req/s %s, CPU/req %s (daemon alone %s);"
                  " vs fio defaults: req/s %s" %
                  ("", PEER_NAMES[best], ratio(v["iops"], b["iops"]), ratio(v["cpu"], b["cpu"]),
                   ratio(v["be"], b["cpu"]),
                   ratio(v["iops"], m["libaio"]["iops"]) if "libaio" in m else "-"))


# ---------------------------------------------------------------------------
# Measurements


class Series:
    """A cumulative count (e.g. guest writes completed) over wall-clock time."""

    def __init__(self):
        self.pts = []

    def add(self, t, n):
        self.pts.append((t, n))

    def at(self, t):
        """The count at t, interpolated linearly."""
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
        """Counts per second over [t0, t1]."""
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


def fmt(v, f="%.0f"):
    """v formatted, "-" for None."""
    return "-" if v is None else f % v


def ratio(a, b, f="%.2f"):
    """a / b formatted, "-" when either is None or b is 0."""
    return "-" if a is None or b in (None, 0) else f % (a / b)


# ---------------------------------------------------------------------------
# QEMU


class QMP:
    """A QMP monitor on a unix socket; events are kept in .events (each with
    "t", its timestamp in seconds)."""

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
        """Execute name(**args); its "return", RuntimeError on "error"."""
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
        """The first event called name received so far, or None."""
        for e in self.events:
            if e["event"] == name:
                return e
        return None


# ---------------------------------------------------------------------------
# The command line


def _number(s):
    try:
        return float(s)
    except ValueError:
        return None


def main(argv):
    if len(argv) == 4 and argv[1] == "fill":
        fio_fill(argv[2], argv[3])
        return 0
    if len(argv) == 3 and argv[1] == "json":
        d = json.load(sys.stdin)
        print(eval(argv[2], {"d": d}))
        return 0
    if len(argv) == 2 and argv[1] == "fiosum":
        print(json.dumps(fio_summary(json.load(sys.stdin))))
        return 0
    if len(argv) == 3 and argv[1] == "peers":
        peers_table(argv[2])
        return 0
    if len(argv) == 4 and argv[1] == "ratio":
        print(ratio(_number(argv[2]), _number(argv[3])))
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
