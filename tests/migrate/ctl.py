#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""Raw JSON on a vbdd control socket (the protocol of src/ctl.h), for the
migration tests: no dependency on vbd-ctl.

    ctl.py SOCK CMD [ARGS-JSON]
        one request; prints the reply's "result" (one JSON line) and exits 0,
        or prints the reply's "error" object and exits 1.  Exit 3: no daemon.
    ctl.py SOCK wait STATE[,STATE...] SECONDS [OUT]
        polls migrate-status (every 50 ms) until "state" is one of STATEs;
        prints the status (also to OUT) and exits 0.  Exits 1 on timeout or
        when the state becomes a final one that is not wanted (failed,
        aborted, cutover, none), with the last status.
    ctl.py SOCK wait-info KEY VALUE SECONDS
        polls "info" until result[KEY] == VALUE (JSON); exit 0, or 1.
    ctl.py check FILE EXPR [MESSAGE]
        evaluates the Python expression EXPR with the fields of the JSON
        object in FILE as variables; exits 1 (printing the fields EXPR
        names) when it is false.
"""
import json
import os
import re
import socket
import sys
import time

FINAL = {"failed", "aborted", "cutover", "none"}


class Ctl:
    def __init__(self, path, timeout=60):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
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
                raise ConnectionError("the daemon closed the connection")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        rep = json.loads(line)
        if rep.get("id") != self.n:
            raise ValueError("reply id %r for request %d: %s" % (rep.get("id"), self.n, line))
        return rep


def connect(path):
    try:
        return Ctl(path)
    except OSError as e:
        print("ctl.py: %s: %s" % (path, e), file=sys.stderr)
        sys.exit(3)


def out(obj, path=None):
    line = json.dumps(obj, sort_keys=True)
    print(line)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")


def cmd_call(path, cmd, args):
    rep = connect(path).call(cmd, json.loads(args) if args else None)
    if rep.get("ok"):
        out(rep.get("result"))
        return 0
    out(rep.get("error"))
    return 1


def cmd_wait(path, states, secs, outfile):
    want = set(states.split(","))
    c = connect(path)
    end = time.monotonic() + float(secs)
    last = None
    while True:
        rep = c.call("migrate-status")
        if not rep.get("ok"):
            print("ctl.py: migrate-status: %s" % json.dumps(rep.get("error")), file=sys.stderr)
            out(rep.get("error"), outfile)
            return 1
        last = rep["result"]
        st = last.get("state")
        if st in want:
            out(last, outfile)
            return 0
        if st in FINAL:
            print("ctl.py: waiting for %s: the migration ended in state %s" % (states, st),
                  file=sys.stderr)
            out(last, outfile)
            return 1
        if time.monotonic() > end:
            print("ctl.py: still %s after %s s (waiting for %s)" % (st, secs, states),
                  file=sys.stderr)
            out(last, outfile)
            return 1
        time.sleep(0.05)


def cmd_wait_info(path, key, value, secs):
    want = json.loads(value)
    end = time.monotonic() + float(secs)
    while True:
        try:
            rep = Ctl(path).call("info")
            if rep.get("ok") and rep["result"].get(key) == want:
                return 0
        except (OSError, ValueError):
            pass
        if time.monotonic() > end:
            print("ctl.py: info %s != %s after %s s" % (key, value, secs), file=sys.stderr)
            return 1
        time.sleep(0.05)


def cmd_check(path, expr, msg):
    with open(path) as f:
        obj = json.loads(f.read().strip().splitlines()[-1])
    env = dict(obj)
    try:
        ok = eval(expr, {"__builtins__": {"abs": abs, "len": len, "min": min, "max": max}}, env)
    except Exception as e:  # a missing field is a failure, said so
        ok = False
        print("ctl.py: check %r: %s: %s" % (expr, type(e).__name__, e), file=sys.stderr)
    if ok:
        return 0
    names = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)) & set(obj))
    print("FAIL: %s%s: %s" % (msg + ": " if msg else "", expr,
                              ", ".join("%s=%s" % (n, json.dumps(obj[n])) for n in names)),
          file=sys.stderr)
    return 1


def main(argv):
    if len(argv) >= 3 and argv[1] == "check":
        return cmd_check(argv[2], argv[3], argv[4] if len(argv) > 4 else "")
    if len(argv) >= 5 and argv[2] == "wait":
        return cmd_wait(argv[1], argv[3], argv[4], argv[5] if len(argv) > 5 else None)
    if len(argv) == 6 and argv[2] == "wait-info":
        return cmd_wait_info(argv[1], argv[3], argv[4], argv[5])
    if len(argv) in (3, 4):
        return cmd_call(argv[1], argv[2], argv[3] if len(argv) == 4 else None)
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
