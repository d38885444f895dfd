#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""What a forwarded guest write costs the source daemon, in counts rather
than time (the machine's 2 cores are shared, so wall-clock ratios are
noisy): syscalls per write (strace -c -f) and user-space instructions per
write (valgrind --tool=callgrind, load-independent), over a fixed number of
guest writes, first without a migration (the baseline) and then with a PASM
migration ready (every write forwarded).  Not a test: prints the figures;
they go to bench/RESULTS.md by hand.

  bench/fwd-cost.py [OPTIONS] [BUILD_DIR]        (bench/fwd-cost.py --help)

The guest: vbd-sim bench, 4 KiB random (--rw write: sequential) writes at
queue depth 16, on a raw
image of --size (sparse: the copy is quick, mostly WRITE_ZEROES) through
vbdd-sim, the source daemon (run under callgrind for --tool callgrind).
The partner: vbdd --export-only --nbd-writable, on a unix socket or behind
an emulated link (--link 10g: tests/lib/netns.sh, needs root).  Each window
counts --writes guest writes (the ready window: that many forwarded ones).
Also printed: the guest's IOPS in each window (secondary: the tool's own
overhead weighs on it) and, with --tool none, plain IOPS.
"""
import argparse
import glob
import os
import re
import signal
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "lib"))
import vbdctl  # noqa: E402
from benchlib import LINKS, NetLink, Procs, die, parse_size, proc_cpu, stop  # noqa: E402


def options(argv):
    ap = argparse.ArgumentParser(prog="bench/fwd-cost.py", description=__doc__.split("\n\n")[0])
    ap.add_argument("build", nargs="?", default="build")
    ap.add_argument("--tool", choices=("strace", "callgrind", "none"), default="strace")
    ap.add_argument("--link", default="none", help="none (unix socket) or 10g, 1g (netns)")
    ap.add_argument("--size", default="256M")
    ap.add_argument("--writes", type=int, default=20000,
                    help="guest writes per window (default 20000; callgrind: use ~3000)")
    ap.add_argument("--iodepth", type=int, default=16)
    ap.add_argument("--rw", choices=("randwrite", "write"), default="randwrite",
                    help="the guest's writes: random (default) or sequential (write: "
                    "contiguous forwards, coalesced)")
    ap.add_argument("--mig-args", default="{}", help="extra migrate-start args (JSON)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (dumps)")
    ap.add_argument("--timeout", type=float, default=300, help="per window, s")
    return ap.parse_args(argv)


def counters(ctl):
    st = ctl.call("stats")
    ms = ctl.call("migrate-status")
    return time.time(), st["ops"]["write"]["requests"], ms.get("writes_forwarded", 0)


def wait_for(ctl, idx, n, base, timeout):
    end = time.time() + timeout
    while True:
        c = counters(ctl)
        if c[idx] - base[idx] >= n:
            return c
        if time.time() > end:
            die("window: only %d of %d in %.0f s" % (c[idx] - base[idx], n, timeout))
        # rarely: answering the control socket costs the daemon too (JSON)
        time.sleep(0.5)


def strace_totals(path):
    """{syscall: calls} and the total from strace -c output."""
    calls, total = {}, 0
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
                n = int(p[3])
                calls[p[-1]] = n
            elif p and p[-1] == "total":
                total = int(p[3]) if len(p) >= 5 else int(p[2])
    return calls, total


def callgrind_total(pattern):
    """The instructions of the newest callgrind dump matching pattern."""
    files = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not files:
        die("no callgrind dump (%s)" % pattern)
    with open(files[-1]) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    die("no totals in " + files[-1])


class Window:
    """Counts over one window of the source daemon pid."""

    def __init__(self, tool, pid, work, name, procs):
        self.tool, self.pid, self.work, self.name, self.procs = tool, pid, work, name, procs

    def begin(self):
        if self.tool == "strace":
            self.out = os.path.join(self.work, "strace-%s.txt" % self.name)
            self.p = self.procs.spawn("strace-" + self.name,
                                      ["strace", "-c", "-f", "-o", self.out, "-p", str(self.pid)])
            time.sleep(1.0)  # attached to every thread
        elif self.tool == "callgrind":
            subprocess.run(["callgrind_control", "-z", str(self.pid)], check=True,
                           stdout=subprocess.DEVNULL)

    def end(self):
        """(syscalls or instructions, {syscall: calls})"""
        if self.tool == "strace":
            stop(self.p, signal.SIGINT, 60)
            calls, total = strace_totals(self.out)
            return total, calls
        if self.tool == "callgrind":
            subprocess.run(["callgrind_control", "-d", self.name, str(self.pid)], check=True,
                           stdout=subprocess.DEVNULL)
            time.sleep(0.5)
            return callgrind_total(os.path.join(self.work, "cg.out.*")), {}
        return 0, {}


def main(argv):
    import json
    opt = options(argv)
    b = os.path.abspath(opt.build)
    sim = os.path.join(b, "tests/sim/front/vbd-sim")
    vbdd_sim = os.path.join(b, "tests/sim/vbdd-sim")
    vbdd = os.path.join(b, "vbdd")
    work = tempfile.mkdtemp(prefix="vbd-fwdcost.", dir="/var/tmp")
    procs = Procs(work)
    link = None
    try:
        size = parse_size(opt.size)
        src, dst = os.path.join(work, "src.img"), os.path.join(work, "dst.img")
        for p in (src, dst):
            with open(p, "wb") as f:
                f.truncate(size)
        argv_p = [vbdd, "--export-only", "--image", "raw:%s" % dst, "--nbd-writable", "-q",
                  "--nbd"]
        if opt.link != "none":
            link = NetLink("vbdf%d" % (os.getpid() % 100000), LINKS[opt.link])
            partner = procs.spawn("partner", link.argv(argv_p + ["tcp:%s:10813" % link.ns_addr]))
            link.wait_tcp(10813, partner, "partner", procs)
            uri = "nbd://%s:10813" % link.ns_addr
        else:
            psock = os.path.join(work, "p.sock")
            partner = procs.spawn("partner", argv_p + ["unix:" + psock])
            procs.wait_sock(psock, partner, "partner")
            uri = "nbd+unix:///?socket=" + psock
        wrapper = os.path.join(work, "vbdd-sim.sh")
        with open(wrapper, "w") as f:
            if opt.tool == "callgrind":
                f.write('#!/bin/sh\nexec valgrind -q --tool=callgrind --callgrind-out-file=%s '
                        '"%s" "$@"\n' % (os.path.join(work, "cg.out.%p"), vbdd_sim))
            else:
                f.write('#!/bin/sh\nexec "%s" "$@"\n' % vbdd_sim)
        os.chmod(wrapper, 0o755)
        rtdir = os.path.join(work, "run")
        os.mkdir(rtdir, 0o700)
        env = dict(os.environ, VBD_SIM_VBDD=wrapper, VBD_RUNTIME_DIR=rtdir)
        procs.spawn("guest", [sim, "bench", "--image", "raw:" + src, "--rw", opt.rw,
                              "--bs", "4096", "--iodepth", str(opt.iodepth), "--runtime",
                              "100000", "--json"], out=os.path.join(work, "guest.json"), env=env)
        csock = vbdctl.socket_path(1, 51712, rtdir)
        end = time.time() + 120
        while not os.path.exists(csock) and time.time() < end:
            time.sleep(0.2)
        ctl = vbdctl.Client(csock, timeout=120)
        pid = ctl.call("info")["pid"]
        c0 = counters(ctl)
        wait_for(ctl, 1, 200, c0, 120)  # warm-up

        res = {}
        for name in ("base", "ready"):
            if name == "ready":
                ctl.call("migrate-start", dict(json.loads(opt.mig_args), to=uri))
                ctl.wait_state("ready", opt.timeout)
                wait_for(ctl, 2, 200, counters(ctl), opt.timeout)
            w = Window(opt.tool, pid, work, name, procs)
            cpu0 = proc_cpu(pid)
            a0 = counters(ctl)
            w.begin()
            a = counters(ctl)
            idx = 1 if name == "base" else 2
            z = wait_for(ctl, idx, opt.writes, a, opt.timeout)
            total, calls = w.end()
            z1 = counters(ctl)
            cpu1 = proc_cpu(pid)
            # the tool's window lies between [a, z] and [a0, z1]: the mean
            writes = ((z[1] - a[1]) + (z1[1] - a0[1])) / 2
            fwd = ((z[2] - a[2]) + (z1[2] - a0[2])) / 2
            res[name] = dict(total=total, calls=calls, writes=writes, fwd=fwd,
                             iops=writes / (z[0] - a[0]),
                             cpu_us=(cpu1 - cpu0) * 1e6 / max((z1[1] - a0[1]), 1))
        try:
            ctl.call("migrate-abort")
        except vbdctl.CommandError:
            pass
        unit = {"strace": "syscalls", "callgrind": "instructions", "none": "-"}[opt.tool]
        print("fwd-cost: tool %s, link %s, size %s, %s 4 KiB at QD %d" % (
            opt.tool, opt.link, opt.size, opt.rw, opt.iodepth))
        for name, r in res.items():
            per = r["total"] / max(r["writes"], 1)
            print("%-5s %6.0f guest writes (%6.0f forwarded), %7.0f IOPS, source CPU %.1f us/write, "
                  "%s/write %.2f" % (name, r["writes"], r["fwd"], r["iops"], r["cpu_us"], unit, per))
            if r["calls"]:
                top = sorted(r["calls"].items(), key=lambda kv: -kv[1])[:8]
                print("      " + ", ".join("%s %.2f" % (k, v / max(r["writes"], 1))
                                           for k, v in top))
        b_, r_ = res["base"], res["ready"]
        if b_["total"]:
            print("forward overhead: %s/forwarded write %.2f over the baseline's %.2f; "
                  "IOPS ready/base %.2f" % (
                      unit, r_["total"] / max(r_["fwd"], 1) - b_["total"] / max(b_["writes"], 1),
                      b_["total"] / max(b_["writes"], 1), r_["iops"] / b_["iops"]))
        else:
            print("IOPS ready/base %.2f" % (r_["iops"] / b_["iops"]))
        ctl.close()
    finally:
        procs.stop_all()
        if link:
            link.down()
        if opt.keep:
            print("kept " + work)
        else:
            subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main(sys.argv[1:])
