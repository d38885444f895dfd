#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""vbdd's control socket from Python, for the tests and the benchmarks.

The protocol (src/ctl.h) is one JSON object per line each way on a unix
stream socket, <runtime-dir>/vbdd-<domid>-<devid>.sock:

    request  {"v": 1, "id": N, "cmd": "NAME", "args": {...}}
    reply    {"v": 1, "id": N, "ok": true, "result": {...}}
          or {"v": 1, "id": N, "ok": false,
              "error": {"errno": 16, "code": "EBUSY", "message": "..."}}

one reply per request, in order; the commands and their fields are in
vbd-ctl(8).  Standard library only.  As a module:

    import vbdctl
    with vbdctl.Client(domid=1, devid=51712) as c:   # or Client(SOCKET_PATH)
        c.call("migrate-start", {"to": uri})         # the result, or CommandError
        status = c.wait_state("ready", 120)

Errors: connect() failing (no daemon) raises the OSError; everything else
about a daemon raises a CtlError: CommandError (ok: false, with errno, code
and message), ProtocolError (closed connection, not JSON, wrong id),
CtlTimeout (no reply in time, or a wait ran out) and MigrationEnded.

As a program, for the shell tests (tests/migrate/mig-lib.sh); exit 0 ok,
1 failed, 2 usage, 3 no daemon on SOCK:

    vbdctl.py SOCK CMD [ARGS-JSON]
        one request; prints the reply's "result" (one JSON line) and exits 0,
        or prints the reply's "error" object and exits 1.
    vbdctl.py SOCK wait STATE[,STATE...] SECONDS [OUT]
        polls migrate-status (every 50 ms) until "state" is one of STATEs;
        prints the status (also to OUT) and exits 0.  Exits 1 on timeout or
        when the state becomes a final one that is not wanted (failed,
        aborted, cutover, none), with the last status.
    vbdctl.py SOCK wait-info KEY VALUE SECONDS
        polls "info" (a new connection each time: the daemon may not be up
        yet) until result[KEY] == VALUE (JSON); exit 0, or 1.
    vbdctl.py check FILE EXPR [MESSAGE]
        evaluates the Python expression EXPR with the fields of the JSON
        object on the last line of FILE (what the commands above print) as
        variables; exits 1 (printing the fields EXPR names) when it is false.
"""
import json
import os
import re
import socket
import sys
import time

PROTOCOL = 1
RUNTIME_DIR_DEFAULT = "/run/vbd"
# migrate-status states a migration does not leave by itself
FINAL_STATES = frozenset({"failed", "aborted", "cutover", "none"})
POLL_S = 0.05


class CtlError(Exception):
    """Anything that went wrong talking to a daemon (but connecting)."""


class CommandError(CtlError):
    """The daemon answered {"ok": false}: cmd, errno, code, message, and the
    whole error object in .error."""

    def __init__(self, cmd, error):
        self.cmd = cmd
        self.error = error if isinstance(error, dict) else {}
        self.errno = self.error.get("errno")
        self.code = self.error.get("code")
        self.message = self.error.get("message")
        super().__init__("%s: %s %s" % (cmd, self.code, self.message))


class ProtocolError(CtlError):
    """No usable reply: the connection closed, a line that is not JSON, or a
    reply to another request."""


class CtlTimeout(CtlError):
    """No reply within the socket's timeout, or a wait ran out; .last is the
    last status (or info) seen, None if none."""

    def __init__(self, msg, last=None):
        super().__init__(msg)
        self.last = last


class MigrationEnded(CtlError):
    """wait_state(): the migration reached a final state that was not asked
    for; .status is that migrate-status."""

    def __init__(self, msg, status):
        super().__init__(msg)
        self.status = status


def socket_path(domid, devid, runtime_dir=None):
    """The control socket of VBD domid/devid: in runtime_dir, else
    $VBD_RUNTIME_DIR, else /run/vbd (vbd.conf's runtime-dir is not read)."""
    d = runtime_dir or os.environ.get("VBD_RUNTIME_DIR") or RUNTIME_DIR_DEFAULT
    return os.path.join(d, "vbdd-%d-%d.sock" % (domid, devid))


class Client:
    """One connection to a daemon's control socket.

    Client(path) or Client(domid=D, devid=N[, runtime_dir=DIR]); timeout is
    the seconds any one reply may take (pause and migrate-cutover answer
    after a drain).  Raises the OSError when nobody listens there."""

    def __init__(self, path=None, *, domid=None, devid=None, runtime_dir=None, timeout=60):
        self.path = path or socket_path(domid, devid, runtime_dir)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        try:
            self.sock.connect(self.path)
        except OSError:
            self.sock.close()
            raise
        self._buf = b""
        self._id = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        self.sock.close()

    def _line(self, cmd):
        """Exactly one reply line (the rest stays buffered for the next)."""
        while b"\n" not in self._buf:
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                raise CtlTimeout("%s: no reply in %s s" % (cmd, self.sock.gettimeout())) from None
            if not chunk:
                raise ProtocolError("%s: the daemon closed the control connection" % cmd)
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        return line

    def request(self, cmd, args=None):
        """Send one request and return the whole reply object, ok or not."""
        self._id += 1
        req = {"v": PROTOCOL, "id": self._id, "cmd": cmd}
        if args is not None:
            req["args"] = args
        self.sock.sendall(json.dumps(req).encode() + b"\n")
        line = self._line(cmd)
        try:
            rep = json.loads(line)
        except ValueError:
            raise ProtocolError("%s: a reply that is not JSON: %r" % (cmd, line[:200])) from None
        if not isinstance(rep, dict) or rep.get("id") != self._id:
            raise ProtocolError("%s: reply %r to request %d" % (cmd, line[:200], self._id))
        return rep

    def call(self, cmd, args=None):
        """The command's result; CommandError if the daemon refused it."""
        rep = self.request(cmd, args)
        if not rep.get("ok"):
            raise CommandError(cmd, rep.get("error"))
        return rep.get("result")

    def wait_state(self, states, timeout, interval=POLL_S, each=None):
        """Poll migrate-status until its state is one of states (a name or a
        collection of names) and return that status.  MigrationEnded if it
        reaches another final state, CtlTimeout after timeout seconds.
        each(status), if given, sees every status polled, first."""
        want = [states] if isinstance(states, str) else list(states)
        end = time.monotonic() + timeout
        while True:
            st = self.call("migrate-status")
            if each:
                each(st)
            state = st.get("state")
            if state in want:
                return st
            if state in FINAL_STATES:
                raise MigrationEnded("waiting for %s: the migration ended in state %s"
                                     % (",".join(want), state), st)
            if time.monotonic() > end:
                raise CtlTimeout("still %s after %g s (waiting for %s)"
                                 % (state, timeout, ",".join(want)), st)
            time.sleep(interval)


def wait_info(path, key, value, timeout, interval=POLL_S):
    """Poll "info" on path until result[key] == value and return the info;
    a new connection each time, and no daemon yet (or a bad reply) is only a
    reason to try again.  CtlTimeout after timeout seconds."""
    end = time.monotonic() + timeout
    last = None
    while True:
        try:
            with Client(path) as c:
                last = c.call("info")
            if last.get(key) == value:
                return last
        except (OSError, CtlError):
            pass
        if time.monotonic() > end:
            raise CtlTimeout("info %s != %s after %g s" % (key, json.dumps(value), timeout), last)
        time.sleep(interval)


# ---------------------------------------------------------------------------
# The command line


def _out(obj, path=None):
    line = json.dumps(obj, sort_keys=True)
    print(line)
    if path:
        with open(path, "w") as f:
            f.write(line + "\n")


def _say(msg):
    print("vbdctl: " + msg, file=sys.stderr)


def _connect(path):
    try:
        return Client(path)
    except OSError as e:
        _say("%s: %s" % (path, e))
        sys.exit(3)


def cli_call(path, cmd, args):
    """SOCK CMD [ARGS-JSON]"""
    try:
        args = json.loads(args) if args else None
    except ValueError as e:
        _say("%s: arguments are not JSON: %s" % (cmd, e))
        return 2
    with _connect(path) as c:
        rep = c.request(cmd, args)
    if rep.get("ok"):
        _out(rep.get("result"))
        return 0
    _out(rep.get("error"))
    return 1


def cli_wait(path, states, secs, outfile):
    """SOCK wait STATE[,STATE...] SECONDS [OUT]"""
    with _connect(path) as c:
        try:
            st = c.wait_state(states.split(","), float(secs))
        except CommandError as e:
            _say("migrate-status: %s" % json.dumps(e.error))
            _out(e.error, outfile)
            return 1
        except MigrationEnded as e:
            _say(str(e))
            _out(e.status, outfile)
            return 1
        except CtlTimeout as e:
            _say(str(e))
            _out(e.last, outfile)
            return 1
    _out(st, outfile)
    return 0


def cli_wait_info(path, key, value, secs):
    """SOCK wait-info KEY VALUE SECONDS"""
    try:
        wait_info(path, key, json.loads(value), float(secs))
    except CtlTimeout as e:
        _say(str(e))
        return 1
    return 0


def cli_check(path, expr, msg):
    """check FILE EXPR [MESSAGE]"""
    with open(path) as f:
        obj = json.loads(f.read().strip().splitlines()[-1])
    env = dict(obj)
    try:
        ok = eval(expr, {"__builtins__": {"abs": abs, "len": len, "min": min, "max": max}}, env)
    except Exception as e:  # a missing field is a failure, said so
        ok = False
        _say("check %r: %s: %s" % (expr, type(e).__name__, e))
    if ok:
        return 0
    names = sorted(set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", expr)) & set(obj))
    print("FAIL: %s%s: %s" % (msg + ": " if msg else "", expr,
                              ", ".join("%s=%s" % (n, json.dumps(obj[n])) for n in names)),
          file=sys.stderr)
    return 1


def main(argv):
    n, verb = len(argv), argv[2] if len(argv) > 2 else None
    try:
        if argv[1:2] == ["check"]:
            if n in (4, 5):
                return cli_check(argv[2], argv[3], argv[4] if n > 4 else "")
        elif verb == "wait":
            if n in (5, 6):
                return cli_wait(argv[1], argv[3], argv[4], argv[5] if n > 5 else None)
        elif verb == "wait-info":
            if n == 6:
                return cli_wait_info(argv[1], argv[3], argv[4], argv[5])
        elif n in (3, 4):
            return cli_call(argv[1], verb, argv[3] if n > 3 else None)
    except CtlError as e:
        _say(str(e))
        return 1
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
