#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A unix-socket relay that can be slowed down or stalled, to play a bad
network between a migrating vbdd and its NBD partner.

    stall-proxy.py --listen PATH --to PATH [--delay MS] [--stall-after BYTES]

Every connection to --listen is relayed to a new connection to --to, in both
directions, in chunks of at most 64 KiB.
  --delay MS          sleep MS milliseconds before relaying each chunk
  --stall-after N     stop relaying once N bytes went towards --to (0: never)
  SIGUSR1             stop relaying from now on: connections stay open, nothing
                      more is read or written (a stalled network)
  SIGUSR2             relay again
  SIGTERM             print the byte counts on stderr and exit 0
"""
import argparse
import os
import selectors
import signal
import socket
import sys
import time

CHUNK = 64 * 1024


class Relay:
    def __init__(self, a):
        self.delay = a.delay / 1000.0
        self.stall_after = a.stall_after
        self.stalled = False
        self.up = 0  # bytes towards --to
        self.down = 0
        self.sel = selectors.DefaultSelector()
        self.to = a.to
        self.pairs = {}  # socket -> (peer, pending bytes for peer)
        try:
            os.unlink(a.listen)
        except FileNotFoundError:
            pass
        self.lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.lsock.bind(a.listen + ".tmp")
        self.lsock.listen(8)
        os.rename(a.listen + ".tmp", a.listen)  # appears only once listening
        self.lsock.setblocking(False)
        self.sel.register(self.lsock, selectors.EVENT_READ, "listen")
        self.upstream = set()  # the client-side sockets
        self.outbuf = {}  # socket -> bytes waiting to be written to it

    def stall(self, *_):
        self.stalled = True

    def unstall(self, *_):
        self.stalled = False

    def close_pair(self, s):
        peer = self.pairs.pop(s, None)
        for x in (s, peer):
            if x is None:
                continue
            try:
                self.sel.unregister(x)
            except (KeyError, ValueError):
                pass
            self.pairs.pop(x, None)
            self.outbuf.pop(x, None)
            self.upstream.discard(x)
            x.close()

    def accept(self):
        c, _ = self.lsock.accept()
        t = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            t.connect(self.to)
        except OSError as e:
            print("stall-proxy: connecting to %s: %s" % (self.to, e), file=sys.stderr)
            c.close()
            t.close()
            return
        for x in (c, t):
            x.setblocking(False)
            self.outbuf[x] = bytearray()
        self.pairs[c] = t
        self.pairs[t] = c
        self.upstream.add(c)
        self.sel.register(c, selectors.EVENT_READ, "data")
        self.sel.register(t, selectors.EVENT_READ, "data")

    def readable(self, s):
        peer = self.pairs[s]
        if len(self.outbuf[peer]) >= 4 * CHUNK:
            return
        try:
            data = s.recv(CHUNK)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close_pair(s)
            return
        if self.delay:
            time.sleep(self.delay)
        self.outbuf[peer] += data
        if s in self.upstream:
            self.up += len(data)
            if self.stall_after and self.up >= self.stall_after:
                self.stalled = True
        else:
            self.down += len(data)
        self.writable(peer)

    def writable(self, s):
        buf = self.outbuf.get(s)
        if buf is None:
            return
        try:
            n = s.send(buf) if buf else 0
        except BlockingIOError:
            n = 0
        except OSError:
            self.close_pair(s)
            return
        del buf[:n]

    def run(self):
        while True:
            if self.stalled:
                # Accept nothing, read nothing, write nothing: the kernel
                # buffers fill up and the peers block, like on a dead link.
                time.sleep(0.05)
                continue
            for s in list(self.pairs):
                ev = 0
                if len(self.outbuf[self.pairs[s]]) < 4 * CHUNK:
                    ev |= selectors.EVENT_READ
                if self.outbuf[s]:
                    ev |= selectors.EVENT_WRITE
                registered = s in self.sel.get_map()
                if ev and registered:
                    self.sel.modify(s, ev, "data")
                elif ev:
                    self.sel.register(s, ev, "data")
                elif registered:
                    self.sel.unregister(s)
            for key, ev in self.sel.select(timeout=0.1):
                if self.stalled:
                    break
                if key.data == "listen":
                    self.accept()
                    continue
                s = key.fileobj
                if s in self.pairs and ev & selectors.EVENT_WRITE:
                    self.writable(s)
                if s in self.pairs and ev & selectors.EVENT_READ:
                    self.readable(s)


def main():
    p = argparse.ArgumentParser(description="unix-socket relay that can stall")
    p.add_argument("--listen", required=True)
    p.add_argument("--to", required=True)
    p.add_argument("--delay", type=float, default=0.0, help="ms per relayed chunk")
    p.add_argument("--stall-after", type=int, default=0, help="bytes, then stall")
    a = p.parse_args()
    r = Relay(a)

    def term(*_):
        print("stall-proxy: relayed %d bytes up, %d down%s" %
              (r.up, r.down, " (stalled)" if r.stalled else ""), file=sys.stderr)
        try:
            os.unlink(a.listen)
        except OSError:
            pass
        os._exit(0)

    signal.signal(signal.SIGUSR1, r.stall)
    signal.signal(signal.SIGUSR2, r.unstall)
    signal.signal(signal.SIGTERM, term)
    signal.signal(signal.SIGINT, term)
    r.run()


if __name__ == "__main__":
    main()
