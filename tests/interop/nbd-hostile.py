#!/usr/bin/env python3
# SPDX-License-Identifier: LGPL-2.1-or-later
"""A hostile NBD client on a raw socket, against vbdd's export.

    nbd-hostile.py SOCKET SIZE WRITABLE(0|1) [CERTDIR]

Each attack runs on its own connection and expects, per the NBD spec, an
error reply (and the connection still usable) or a disconnect of that
client only; after each, a well-behaved client on another connection must
still read correctly.  Exits 1 on the first failure.

With CERTDIR (ca-cert.pem, client-cert.pem, client-key.pem) the export
requires TLS (X.509): the attacks are then those on the TLS path (options
before STARTTLS, a drop or garbage instead of the TLS handshake, a
handshake cut in the middle, STARTTLS twice) and the good client upgrades
with Python's ssl module.
"""
import os
import socket
import ssl
import struct
import sys
import time

NBDMAGIC = 0x4E42444D41474943
IHAVEOPT = 0x49484156454F5054
REPMAGIC = 0x3E889045565A9
REQ_MAGIC = 0x25609513
SIMPLE = 0x67446698
STRUCT = 0x668E33EF
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
OPT_STRUCTURED, OPT_LIST_META, OPT_SET_META = 8, 9, 10
REP_ACK, REP_SERVER, REP_INFO, REP_META = 1, 2, 3, 4
ERR = 0x80000000
REP_ERR_UNSUP, REP_ERR_INVALID, REP_ERR_UNKNOWN, REP_ERR_TOO_BIG = ERR + 1, ERR + 3, ERR + 6, ERR + 9
REP_ERR_TLS_REQD = ERR + 5
CMD_READ, CMD_WRITE, CMD_DISC, CMD_FLUSH, CMD_TRIM, CMD_CACHE, CMD_ZERO, CMD_BS = range(8)
EPERM, EINVAL, ENOSPC = 1, 22, 28

sock_path, SIZE, WRITABLE = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
CERTDIR = sys.argv[4] if len(sys.argv) > 4 else None


class Fail(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Fail(msg)


class Conn:
    def __init__(self):
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.s.settimeout(10)
        self.s.connect(sock_path)

    def recv(self, n):
        b = b""
        while len(b) < n:
            c = self.s.recv(n - len(b))
            if not c:
                raise EOFError("closed after %d of %d bytes" % (len(b), n))
            b += c
        return b

    def closed(self):
        """True if the server closed the connection (EOF or reset)."""
        try:
            while True:
                if not self.s.recv(65536):
                    return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError, ssl.SSLError):
            return True

    def greeting(self, cflags=3):
        m, o, hf = struct.unpack(">QQH", self.recv(18))
        check(m == NBDMAGIC and o == IHAVEOPT and hf & 1, "bad greeting")
        self.s.sendall(struct.pack(">I", cflags))

    def opt(self, code, data=b""):
        self.s.sendall(struct.pack(">QII", IHAVEOPT, code, len(data)) + data)

    def reply(self):
        m, o, t, n = struct.unpack(">QIII", self.recv(20))
        check(m == REPMAGIC, "bad option reply magic")
        return o, t, self.recv(n)

    def replies_until_final(self):
        out = []
        while True:
            o, t, d = self.reply()
            out.append((t, d))
            if t not in (REP_SERVER, REP_INFO, REP_META):
                return out

    def starttls(self):
        """STARTTLS, its ACK, then the TLS handshake (X.509, CERTDIR's client)."""
        self.opt(OPT_STARTTLS)
        check(self.reply()[1] == REP_ACK, "STARTTLS: no ACK")
        self.s = tls_context().wrap_socket(self.s, server_hostname="localhost")

    def go(self, name=b"", structured=True, meta=False):
        if structured:
            self.opt(OPT_STRUCTURED)
            check(self.reply()[1] == REP_ACK, "structured replies refused")
        if meta:
            q = b"base:allocation"
            self.opt(OPT_SET_META, struct.pack(">I", len(name)) + name + struct.pack(">II", 1, len(q)) + q)
            r = self.replies_until_final()
            check(r[-1][0] == REP_ACK and r[0][0] == REP_META, "meta context refused")
            self.meta_id = struct.unpack(">I", r[0][1][:4])[0]
        self.opt(OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        r = self.replies_until_final()
        check(r[-1][0] == REP_ACK, "GO refused: %x" % r[-1][0])
        self.structured = structured

    def req(self, typ, off, n, flags=0, cookie=1, payload=b""):
        self.s.sendall(struct.pack(">IHHQQI", REQ_MAGIC, flags, typ, cookie, off, n) + payload)

    def resp(self, read_len=0):
        """(cookie, error, data) of one reply (structured: one chunk with DONE expected)."""
        magic = struct.unpack(">I", self.recv(4))[0]
        if magic == SIMPLE:
            err, cookie = struct.unpack(">IQ", self.recv(12))
            data = self.recv(read_len) if (read_len and not err) else b""
            return cookie, err, data
        check(magic == STRUCT, "bad reply magic %x" % magic)
        flags, typ, cookie, n = struct.unpack(">HHQI", self.recv(16))
        payload = self.recv(n)
        check(flags & 1, "reply without DONE")
        if typ == 0x8001:
            return cookie, struct.unpack(">I", payload[:4])[0], b""
        if typ == 1:
            return cookie, 0, payload[8:]
        return cookie, 0, payload


def tls_context():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(CERTDIR, "ca-cert.pem"))
    ctx.load_cert_chain(os.path.join(CERTDIR, "client-cert.pem"),
                        os.path.join(CERTDIR, "client-key.pem"))
    return ctx


def good_client():
    """A well-behaved client: handshake (with TLS if required), a read, a disconnect."""
    c = Conn()
    c.greeting()
    if CERTDIR:
        c.starttls()
    c.go()
    c.req(CMD_READ, 0, 4096, cookie=77)
    cookie, err, data = c.resp(4096)
    check(cookie == 77 and err == 0 and len(data) == 4096, "good client: bad read reply")
    c.req(CMD_DISC, 0, 0)
    check(c.closed(), "good client: not closed after DISC")


def attack_bad_greeting_flags():
    c = Conn()
    c.greeting(cflags=0x80)
    check(c.closed(), "unknown client flags: not disconnected")


def attack_bad_option_magic():
    c = Conn()
    c.greeting()
    c.s.sendall(b"GARBAGE!" + struct.pack(">II", OPT_GO, 0))
    check(c.closed(), "bad option magic: not disconnected")


def attack_options():
    c = Conn()
    c.greeting()
    # an oversized option is skipped and refused, the connection goes on
    c.opt(OPT_LIST_META, b"x" * (200 * 1024))
    check(c.reply()[1] == REP_ERR_TOO_BIG, "oversized option: no ERR_TOO_BIG")
    # malformed GO: name length beyond the option
    c.opt(OPT_GO, struct.pack(">I", 1000) + b"ab" + struct.pack(">H", 0))
    check(c.reply()[1] == REP_ERR_INVALID, "malformed GO: no ERR_INVALID")
    # GO with a bad info count
    c.opt(OPT_GO, struct.pack(">I", 0) + struct.pack(">H", 5))
    check(c.reply()[1] == REP_ERR_INVALID, "bad info count: no ERR_INVALID")
    # unknown export
    c.opt(OPT_INFO, struct.pack(">I", 5) + b"nosuc" + struct.pack(">H", 0))
    check(c.reply()[1] == REP_ERR_UNKNOWN, "unknown export: no ERR_UNKNOWN")
    # meta context before structured replies
    c.opt(OPT_SET_META, struct.pack(">II", 0, 0))
    check(c.reply()[1] == REP_ERR_INVALID, "SET_META before structured: no ERR_INVALID")
    c.opt(OPT_STRUCTURED, b"junk")
    check(c.reply()[1] == REP_ERR_INVALID, "STRUCTURED_REPLY with data accepted")
    c.opt(OPT_LIST, b"x")
    check(c.reply()[1] == REP_ERR_INVALID, "LIST with data accepted")
    c.opt(OPT_STARTTLS)
    check(c.reply()[1] & ERR, "STARTTLS accepted (no TLS here)")
    c.opt(0xDEAD, b"12345")
    check(c.reply()[1] == REP_ERR_UNSUP, "unknown option: no ERR_UNSUP")
    c.opt(OPT_STRUCTURED)
    check(c.reply()[1] == REP_ACK, "structured replies")
    # meta context queries with lengths that overrun the option
    c.opt(OPT_SET_META, struct.pack(">III", 0, 1, 999) + b"base:allocation")
    check(c.reply()[1] == REP_ERR_INVALID, "overrunning query: no ERR_INVALID")
    c.opt(OPT_LIST_META, struct.pack(">II", 0, 0))
    r = c.replies_until_final()
    check(r[-1][0] == REP_ACK and any(t == REP_META and d[4:] == b"base:allocation" for t, d in r),
          "LIST_META_CONTEXT does not list base:allocation")
    c.opt(OPT_LIST)
    r = c.replies_until_final()
    check(r[0][0] == REP_SERVER and r[-1][0] == REP_ACK, "LIST")
    # the connection still works after all that
    c.go(structured=False)
    c.req(CMD_READ, 0, 512, cookie=5)
    check(c.resp(512)[1] == 0, "read after bad options")
    # an option length we will not even skip: disconnect
    c2 = Conn()
    c2.greeting()
    c2.opt(OPT_INFO)  # header claims 0 bytes: fine, malformed
    check(c2.reply()[1] == REP_ERR_INVALID, "empty INFO")
    c2.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_INFO, 0xFFFFFFFF))
    check(c2.closed(), "4 GiB option: not disconnected")
    # ABORT gets an ACK and a close
    c3 = Conn()
    c3.greeting()
    c3.opt(OPT_ABORT)
    check(c3.reply()[1] == REP_ACK, "ABORT: no ACK")
    check(c3.closed(), "ABORT: not closed")


def attack_requests():
    c = Conn()
    c.greeting()
    c.go(meta=True)
    c.req(CMD_READ, SIZE - 512, 1024, cookie=1)
    check(c.resp()[1:2] == (EINVAL,), "read past the end: not EINVAL")
    c.req(CMD_READ, (1 << 64) - 512, 1024, cookie=2)
    check(c.resp()[1] == EINVAL, "read with offset overflow: not EINVAL")
    c.req(CMD_READ, 0, 64 << 20, cookie=3)
    check(c.resp()[1] == EINVAL, "64 MiB read: not EINVAL")
    c.req(CMD_READ, 1, 512, cookie=4)
    check(c.resp()[1] == EINVAL, "unaligned read: not EINVAL")
    c.req(42, 0, 512, cookie=5)
    check(c.resp()[1] == EINVAL, "unknown command: not EINVAL")
    c.req(CMD_CACHE, 0, 512, cookie=6)
    check(c.resp()[1] == EINVAL, "CACHE (not offered): not EINVAL")
    c.req(CMD_READ, 0, 512, flags=0x100, cookie=7)
    check(c.resp()[1] == EINVAL, "unknown flag: not EINVAL")
    c.req(CMD_FLUSH, 4096, 512, cookie=8)
    check(c.resp()[1] == EINVAL, "flush with a range: not EINVAL")
    c.req(CMD_BS, SIZE - 512, 4096, cookie=9)
    check(c.resp()[1] == EINVAL, "block status past the end: not EINVAL")
    c.req(CMD_BS, 0, 0, cookie=10)
    check(c.resp()[1] == EINVAL, "empty block status: not EINVAL")
    c.req(CMD_BS, 0, 1 << 20, flags=8, cookie=11)
    cookie, err, payload = c.resp()
    check(err == 0 and len(payload) == 12 and struct.unpack(">I", payload[:4])[0] == c.meta_id,
          "block status REQ_ONE: %r" % ((err, payload),))
    if WRITABLE:
        c.req(CMD_WRITE, SIZE - 512, 1024, cookie=12, payload=b"w" * 1024)
        check(c.resp()[1] == ENOSPC, "write past the end: not ENOSPC")
        c.req(CMD_ZERO, SIZE, 512, cookie=13)
        check(c.resp()[1] == ENOSPC, "zero past the end: not ENOSPC")
        c.req(CMD_WRITE, 0, 512, flags=2, cookie=14, payload=b"w" * 512)  # NO_HOLE on a write
        check(c.resp()[1] == EINVAL, "write with NO_HOLE: not EINVAL")
    else:
        c.req(CMD_WRITE, 0, 1024, cookie=12, payload=b"w" * 1024)
        check(c.resp()[1] == EPERM, "write to a read-only export: not EPERM")
        c.req(CMD_TRIM, 0, 1024, cookie=13)
        check(c.resp()[1] == EPERM, "trim of a read-only export: not EPERM")
    # out of order is allowed, but every cookie must come back once
    for i in range(100):
        c.req(CMD_READ, (i * 4096) % SIZE, 4096, cookie=1000 + i)
    got = sorted(c.resp(4096)[0] for _ in range(100))
    check(got == list(range(1000, 1100)), "pipelined reads: cookies %r" % got[:5])
    # garbage instead of a request: disconnect
    c.s.sendall(b"\xde\xad\xbe\xef" + b"\0" * 24)
    check(c.closed(), "bad request magic: not disconnected")

    # a write larger than the limit: an error, then a disconnect
    c = Conn()
    c.greeting()
    c.go()
    c.req(CMD_WRITE, 0, 64 << 20, cookie=1)
    check(c.resp()[1] == EINVAL, "64 MiB write: not EINVAL")
    check(c.closed(), "64 MiB write: not disconnected")

    # lots of reads in flight without reading replies: flow control, then all answered
    c = Conn()
    c.greeting()
    c.go()
    n = 300
    c.s.sendall(b"".join(struct.pack(">IHHQQI", REQ_MAGIC, 0, CMD_READ, i, 0, 1 << 20)
                         for i in range(n)))  # one send: no deadlock on our side
    got = 0
    for i in range(n):
        cookie, err, data = c.resp(1 << 20)
        check(err == 0 and len(data) == 1 << 20, "flow-controlled read %d" % i)
        got += 1
    check(got == n, "flow control: replies")

    # a write whose payload never completes, then a hang-up
    c = Conn()
    c.greeting()
    c.go()
    c.req(CMD_WRITE, 0, 1 << 20, cookie=1, payload=b"p" * 1000)
    c.s.close()

    # DISC with requests in flight: they are answered, then the close
    c = Conn()
    c.greeting()
    c.go()
    for i in range(8):
        c.req(CMD_READ, 0, 65536, cookie=i)
    c.req(CMD_DISC, 0, 0)
    for i in range(8):
        check(c.resp(65536)[1] == 0, "read before DISC")
    check(c.closed(), "not closed after DISC")


def attack_too_many_clients():
    idle = []
    for i in range(16):
        c = Conn()
        c.greeting()
        idle.append(c)
    extra = Conn()
    check(extra.closed(), "17th client not refused")
    for c in idle:
        c.s.close()
    time.sleep(0.3)


def attack_tls_options_before_tls():
    c = Conn()
    c.greeting()
    for code, data in [(OPT_GO, struct.pack(">IH", 0, 0)), (OPT_INFO, struct.pack(">IH", 0, 0)),
                       (OPT_LIST, b""), (OPT_STRUCTURED, b""), (OPT_LIST_META, b"")]:
        c.opt(code, data)
        check(c.reply()[1] == REP_ERR_TLS_REQD, "option %d before TLS: no ERR_TLS_REQD" % code)
    c.opt(0xDEAD, b"12345")
    check(c.reply()[1] == REP_ERR_TLS_REQD, "unknown option before TLS: no ERR_TLS_REQD")
    c.opt(OPT_LIST_META, b"x" * (200 * 1024))  # too long to look at: skipped
    check(c.reply()[1] == REP_ERR_TLS_REQD, "oversized option before TLS: no ERR_TLS_REQD")
    c.opt(OPT_STARTTLS, b"junk")
    check(c.reply()[1] == REP_ERR_INVALID, "STARTTLS with data: no ERR_INVALID")
    c.opt(OPT_ABORT)
    check(c.reply()[1] == REP_ACK, "ABORT before TLS: no ACK")
    check(c.closed(), "ABORT before TLS: not closed")
    # EXPORT_NAME cannot be refused: a disconnect
    c = Conn()
    c.greeting()
    c.opt(OPT_EXPORT_NAME)
    check(c.closed(), "EXPORT_NAME without TLS: not disconnected")


def attack_tls_not_fixed_newstyle():
    c = Conn()
    c.greeting(cflags=2)  # NO_ZEROES without FIXED_NEWSTYLE: no TLS possible
    check(c.closed(), "a client without fixed newstyle: not disconnected")


def attack_tls_drop_after_ack():
    c = Conn()
    c.greeting()
    c.opt(OPT_STARTTLS)
    check(c.reply()[1] == REP_ACK, "STARTTLS: no ACK")
    c.s.close()
    # and before the ACK was even read
    c = Conn()
    c.greeting()
    c.opt(OPT_STARTTLS)
    c.s.close()


def attack_tls_garbage_hello():
    c = Conn()
    c.greeting()
    c.opt(OPT_STARTTLS)
    check(c.reply()[1] == REP_ACK, "STARTTLS: no ACK")
    c.s.sendall(b"GET / HTTP/1.0\r\n\r\n" + b"\xff" * 600)
    check(c.closed(), "garbage instead of a ClientHello: not disconnected")
    # a TLS record header announcing a huge record, then nothing
    c = Conn()
    c.greeting()
    c.opt(OPT_STARTTLS)
    check(c.reply()[1] == REP_ACK, "STARTTLS: no ACK")
    c.s.sendall(b"\x16\x03\x01\xff\xff" + b"\x01" * 100)
    c.s.close()


def attack_tls_mid_handshake():
    """A real ClientHello cut in half, then one sent whole and the peer gone."""
    for cut in (True, False):
        c = Conn()
        c.greeting()
        c.opt(OPT_STARTTLS)
        check(c.reply()[1] == REP_ACK, "STARTTLS: no ACK")
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = tls_context().wrap_bio(inc, out, server_hostname="localhost")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        check(len(hello) > 40, "no ClientHello from ssl")
        c.s.sendall(hello[: len(hello) // 2] if cut else hello)
        if not cut:
            c.recv(5)  # the start of the server's answer
        c.s.close()


def attack_tls_pipelined_hello():
    """STARTTLS and the ClientHello in one send, before the ACK: the server
    hands the bytes it read with the option to TLS, and the session works."""
    c = Conn()
    c.greeting()
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls_context().wrap_bio(inc, out, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    c.s.sendall(struct.pack(">QII", IHAVEOPT, OPT_STARTTLS, 0) + out.read())
    check(c.reply()[1] == REP_ACK, "pipelined STARTTLS: no ACK")

    def pump(fn, *args):
        while True:
            try:
                return fn(*args)
            except ssl.SSLWantReadError:
                if out.pending:
                    c.s.sendall(out.read())
                data = c.s.recv(65536)
                check(data, "closed during the pipelined handshake")
                inc.write(data)
            finally:
                if out.pending:
                    c.s.sendall(out.read())

    pump(obj.do_handshake)
    pump(obj.write, struct.pack(">QII", IHAVEOPT, OPT_LIST, 0))
    hdr = b""
    while len(hdr) < 20:
        hdr += pump(obj.read, 20 - len(hdr))
    m, o, t, n = struct.unpack(">QIII", hdr)
    check(m == REPMAGIC and t == REP_SERVER, "LIST after a pipelined handshake: %x" % t)


def attack_tls_starttls_twice():
    # pipelined: the second STARTTLS is read as the TLS handshake, and fails it
    c = Conn()
    c.greeting()
    c.opt(OPT_STARTTLS)
    c.opt(OPT_STARTTLS)
    check(c.reply()[1] == REP_ACK, "STARTTLS: no ACK")
    check(c.closed(), "STARTTLS twice before the handshake: not disconnected")
    # through TLS: ERR_INVALID, and the connection goes on
    c = Conn()
    c.greeting()
    c.starttls()
    c.opt(OPT_STARTTLS)
    check(c.reply()[1] == REP_ERR_INVALID, "STARTTLS through TLS: no ERR_INVALID")
    c.opt(OPT_LIST)
    r = c.replies_until_final()
    check(r[0][0] == REP_SERVER and r[-1][0] == REP_ACK, "LIST through TLS")
    c.go()
    c.req(CMD_READ, 0, 4096, cookie=9)
    check(c.resp(4096)[1] == 0, "read after STARTTLS twice")
    # reads in flight, then the peer gone without a close_notify
    for i in range(16):
        c.req(CMD_READ, i << 20, 1 << 20, cookie=100 + i)
    c.s.close()  # ssl's close sends no close_notify


def attack_tls_big_reads():
    """Large reads through TLS, replies read slowly: the server's sends wait (EAGAIN)."""
    c = Conn()
    c.greeting()
    c.starttls()
    c.go()
    n = 40
    for i in range(n):
        c.req(CMD_READ, (i << 20) % SIZE, 1 << 20, cookie=i)
    time.sleep(0.5)  # let the socket fill
    got = sorted(c.resp(1 << 20)[0] for _ in range(n))
    check(got == list(range(n)), "big reads through TLS: cookies")
    c.req(CMD_DISC, 0, 0)
    check(c.closed(), "not closed after DISC")


def main():
    attacks = [attack_bad_greeting_flags, attack_bad_option_magic, attack_options,
               attack_requests, attack_too_many_clients]
    if CERTDIR:
        attacks = [attack_tls_options_before_tls, attack_tls_not_fixed_newstyle,
                   attack_tls_drop_after_ack,
                   attack_tls_garbage_hello, attack_tls_mid_handshake, attack_tls_pipelined_hello,
                   attack_tls_starttls_twice,
                   attack_tls_big_reads, attack_bad_greeting_flags, attack_too_many_clients]
    for a in attacks:
        try:
            a()
            good_client()
        except (Fail, EOFError, OSError) as e:
            print("nbd-hostile.py: FAIL in %s: %s" % (a.__name__, e), file=sys.stderr)
            sys.exit(1)
        print("nbd-hostile.py: %s: ok" % a.__name__)


if __name__ == "__main__":
    main()
